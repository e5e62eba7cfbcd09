using System.Runtime.CompilerServices;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using VisionRpc.V1;

namespace VisionRpc.Client;

/// <summary>Connection settings; defaults match the server's (16 MiB messages, 30 s keepalive).</summary>
public sealed record VisionRpcClientOptions
{
    /// <summary>Deadline of each unary call; null waits forever. Streams take their own deadline.</summary>
    public TimeSpan? Timeout { get; init; } = TimeSpan.FromSeconds(30);
    public int MaxMessageBytes { get; init; } = 16 * 1024 * 1024;
    /// <summary>HTTP/2 keepalive ping interval while calls are active (the server accepts one every 10 s).</summary>
    public TimeSpan KeepAlivePingDelay { get; init; } = TimeSpan.FromSeconds(30);
    public TimeSpan KeepAlivePingTimeout { get; init; } = TimeSpan.FromSeconds(10);
}

/// <summary>
/// A thin client over the generated stubs. Example:
/// <code>
/// using var client = new VisionRpcClient("http://127.0.0.1:50051");
/// var response = await client.InferAsync(new[] { await File.ReadAllBytesAsync("coffee.png") });
/// foreach (var d in response.Predictions[0].Detections) Console.WriteLine($"{d.ClassName} {d.Confidence:F2}");
/// </code>
/// </summary>
public sealed class VisionRpcClient : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly InferenceService.InferenceServiceClient _inference;
    private readonly ModelService.ModelServiceClient _models;
    private readonly Health.HealthClient _health;
    private readonly VisionRpcClientOptions _options;

    /// <param name="address">"http://host:port" for plaintext (loopback, or a mesh doing mTLS), "https://..." for TLS.</param>
    public VisionRpcClient(string address, VisionRpcClientOptions? options = null)
    {
        _options = options ?? new VisionRpcClientOptions();
        _channel = GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = _options.MaxMessageBytes,
            MaxSendMessageSize = _options.MaxMessageBytes,
            HttpHandler = new SocketsHttpHandler
            {
                EnableMultipleHttp2Connections = true,
                KeepAlivePingDelay = _options.KeepAlivePingDelay,
                KeepAlivePingTimeout = _options.KeepAlivePingTimeout,
                KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
            },
        });
        _inference = new InferenceService.InferenceServiceClient(_channel);
        _models = new ModelService.ModelServiceClient(_channel);
        _health = new Health.HealthClient(_channel);
    }

    /// <summary>Runs a model on encoded images (JPEG, PNG, BMP, WebP, GIF bytes).</summary>
    public Task<InferResponse> InferAsync(
        IEnumerable<byte[]> images, string model = "", InferOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var request = new InferRequest { ModelId = model, Options = options ?? new InferOptions() };
        request.Images.AddRange(images.Select(bytes => new Image { Encoded = ByteString.CopyFrom(bytes) }));
        return Unary(() => _inference.InferAsync(request, Deadline(), cancellationToken: cancellationToken).ResponseAsync);
    }

    /// <summary>Runs a model on image files, read before the call.</summary>
    public async Task<InferResponse> InferFilesAsync(
        IEnumerable<string> paths, string model = "", InferOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var images = new List<byte[]>();
        foreach (var path in paths) images.Add(await File.ReadAllBytesAsync(path, cancellationToken));
        return await InferAsync(images, model, options, cancellationToken);
    }

    /// <summary>
    /// Subscribes to a server-side video pipeline. Results arrive as they are produced; cancel the token (or stop
    /// enumerating) to unsubscribe, which frees the subscription on the server at once.
    /// </summary>
    public async IAsyncEnumerable<StreamPredictionsResponse> StreamAsync(
        StreamPredictionsRequest request, DateTime? deadline = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var call = _inference.StreamPredictions(request, deadline: deadline, cancellationToken: cancellationToken);
        var stream = call.ResponseStream;
        while (true)
        {
            bool more;
            try
            {
                more = await stream.MoveNext(cancellationToken);
            }
            catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && cancellationToken.IsCancellationRequested)
            {
                yield break; // our own cancellation is a normal end
            }
            catch (RpcException e)
            {
                throw VisionRpcException.From(e);
            }
            if (!more) yield break;
            yield return stream.Current;
        }
    }

    public Task<ListModelsResponse> ListModelsAsync(CancellationToken cancellationToken = default) =>
        Unary(() => _models.ListModelsAsync(new ListModelsRequest(), Deadline(), cancellationToken: cancellationToken).ResponseAsync);

    public async Task<Model> GetModelAsync(string modelId, CancellationToken cancellationToken = default) =>
        (await Unary(() => _models.GetModelAsync(new GetModelRequest { ModelId = modelId }, Deadline(), cancellationToken: cancellationToken).ResponseAsync)).Model;

    public async Task<Model> LoadModelAsync(string modelId, CancellationToken cancellationToken = default) =>
        (await Unary(() => _models.LoadModelAsync(new LoadModelRequest { ModelId = modelId }, Deadline(), cancellationToken: cancellationToken).ResponseAsync)).Model;

    public async Task<Model> UnloadModelAsync(string modelId, CancellationToken cancellationToken = default) =>
        (await Unary(() => _models.UnloadModelAsync(new UnloadModelRequest { ModelId = modelId }, Deadline(), cancellationToken: cancellationToken).ResponseAsync)).Model;

    /// <summary>grpc.health.v1 status; "" is the whole server, "visionrpc.v1.InferenceService" is readiness.</summary>
    public async Task<HealthCheckResponse.Types.ServingStatus> HealthAsync(
        string service = "", CancellationToken cancellationToken = default) =>
        (await Unary(() => _health.CheckAsync(new HealthCheckRequest { Service = service }, Deadline(), cancellationToken: cancellationToken).ResponseAsync)).Status;

    public void Dispose() => _channel.Dispose();

    private DateTime? Deadline() => _options.Timeout is { } timeout ? DateTime.UtcNow + timeout : null;

    private static async Task<T> Unary<T>(Func<Task<T>> call)
    {
        try
        {
            return await call();
        }
        catch (RpcException e)
        {
            throw VisionRpcException.From(e);
        }
    }
}
