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
    /// <summary>
    /// Resume <see cref="VisionRpcClient.StreamAsync"/> subscriptions whose call fails with UNAVAILABLE or whose
    /// connection dies (docs/stream-resume.md). False throws the first such error.
    /// </summary>
    public bool ResumeStreams { get; init; } = true;
    /// <summary>Consecutive re-issued calls without a message before a stream throws the last error (at least 1).</summary>
    public int MaxResumeAttempts { get; init; } = ResumeState.DefaultMaxAttempts;
    /// <summary>
    /// Sent with every call as "authorization: Bearer &lt;key&gt;" (call credentials); the server's --api-keys-file (or,
    /// for load and unload, --admin-keys-file) must hold it. Over "http://" addresses the key travels in the clear: use
    /// "https://", or a mesh whose sidecars encrypt the hop.
    /// </summary>
    public string? ApiKey { get; init; }
    /// <summary>PEM CA certificate that signs the server's certificate ("https://" addresses); null: the system roots.</summary>
    public string? CaCertificateFile { get; init; }
    /// <summary>PEM client certificate and key for mutual TLS; both or neither.</summary>
    public string? ClientCertificateFile { get; init; }
    public string? ClientKeyFile { get; init; }
}

/// <summary>
/// A thin client over the generated stubs. Example:
/// <code>
/// using var client = new VisionRpcClient("http://127.0.0.1:50051");
/// var response = await client.InferAsync(new[] { await File.ReadAllBytesAsync("coffee.png") });
/// foreach (var d in response.Predictions[0].Detections) Console.WriteLine($"{d.ClassName} {d.Confidence:F2}");
/// </code>
/// With several addresses (the replicas of a deployment) every call goes to the current one. A call that finds its
/// server unavailable (UNAVAILABLE or a dead connection before any response, or a server that says it is shutting
/// down) moves the client on to the next (wrapping around), so a stream resumes there and the caller's retry of a
/// unary call does too. A stream that broke after messages (e.g. a connection recycled by max age) resumes on the same
/// address first, where its pipeline still runs and nothing is lost. Nothing is retried behind the caller's back
/// except stream resumes.
/// </summary>
public sealed class VisionRpcClient : IDisposable
{
    /// <summary>ErrorInfo.reason of the UNAVAILABLE that ends every stream of a draining server.</summary>
    private const string ShuttingDown = "SHUTTING_DOWN";

    /// <summary>One server address: its own channel (one HTTP/2 connection pool) and stubs.</summary>
    private sealed record Target(
        GrpcChannel Channel,
        InferenceService.InferenceServiceClient Inference,
        ModelService.ModelServiceClient Models,
        Health.HealthClient HealthCheck);

    private readonly IReadOnlyList<Target> _targets;
    private readonly VisionRpcClientOptions _options;
    private int _current;
    private volatile bool _disposed;

    /// <param name="address">"http://host:port" for plaintext (loopback, or a mesh doing mTLS), "https://..." for TLS.</param>
    public VisionRpcClient(string address, VisionRpcClientOptions? options = null)
        : this(new[] { address }, options)
    {
    }

    /// <param name="addresses">Server addresses ("http://host:port" or "https://..."), tried in turn.</param>
    public VisionRpcClient(IEnumerable<string> addresses, VisionRpcClientOptions? options = null)
    {
        _options = options ?? new VisionRpcClientOptions();
        Addresses = addresses.ToList().AsReadOnly();
        if (Addresses.Count == 0)
            throw new ArgumentException("expected at least one address, got none", nameof(addresses));
        if (_options.MaxResumeAttempts < 1)
            throw new ArgumentOutOfRangeException(nameof(options), _options.MaxResumeAttempts, "MaxResumeAttempts: expected >= 1");
        _targets = Addresses.Select(address =>
        {
            var handler = new SocketsHttpHandler
            {
                EnableMultipleHttp2Connections = true,
                KeepAlivePingDelay = _options.KeepAlivePingDelay,
                KeepAlivePingTimeout = _options.KeepAlivePingTimeout,
                KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
            };
            ClientTls.Configure(handler, _options);
            var channelOptions = new GrpcChannelOptions
            {
                MaxReceiveMessageSize = _options.MaxMessageBytes,
                MaxSendMessageSize = _options.MaxMessageBytes,
                HttpHandler = handler,
            };
            if (_options.ApiKey is { } apiKey)
            {
                var secure = address.StartsWith("https://", StringComparison.OrdinalIgnoreCase);
                channelOptions.Credentials = ChannelCredentials.Create(
                    secure ? ChannelCredentials.SecureSsl : ChannelCredentials.Insecure, ClientTls.ApiKeyCredentials(apiKey));
                channelOptions.UnsafeUseInsecureChannelCallCredentials = !secure;
            }
            var channel = GrpcChannel.ForAddress(address, channelOptions);
            return new Target(
                channel,
                new InferenceService.InferenceServiceClient(channel),
                new ModelService.ModelServiceClient(channel),
                new Health.HealthClient(channel));
        }).ToList();
    }

    /// <summary>The server addresses, in the order they are tried.</summary>
    public IReadOnlyList<string> Addresses { get; }

    /// <summary>Runs a model on encoded images (JPEG, PNG, BMP, WebP, GIF bytes).</summary>
    public Task<InferResponse> InferAsync(
        IEnumerable<byte[]> images, string model = "", InferOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var request = new InferRequest { ModelId = model, Options = options ?? new InferOptions() };
        request.Images.AddRange(images.Select(bytes => new Image { Encoded = ByteString.CopyFrom(bytes) }));
        return Unary(t => t.Inference.InferAsync(request, Deadline(), cancellationToken: cancellationToken).ResponseAsync, cancellationToken);
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
    /// Subscribes to a server-side video pipeline: <c>await foreach</c> over the result. Results arrive as they are
    /// produced; cancel the token (or stop enumerating) to unsubscribe, which frees the subscription on the server at
    /// once. A broken call is resumed (see <see cref="PredictionStream"/>) unless
    /// <see cref="VisionRpcClientOptions.ResumeStreams"/> is false; <paramref name="deadline"/> covers the whole
    /// subscription, resumes included.
    /// </summary>
    public PredictionStream StreamAsync(
        StreamPredictionsRequest request, DateTime? deadline = null, CancellationToken cancellationToken = default) =>
        new(StreamCallAsync, () => _disposed, request, deadline, cancellationToken,
            _options.ResumeStreams, _options.MaxResumeAttempts);

    /// <summary>
    /// Infers frames the caller sends on one bidirectional call (a camera it owns): one <see cref="FrameResult"/>
    /// per frame, in the order sent, with the batching, tracking and analytics of a server-side stream.
    /// <paramref name="config"/> sets the model, options, analytics, MaxInFlight (0: the server's 8, at most 64) and
    /// Backpressure: WAIT (the default) makes the server stop reading while MaxInFlight frames are unanswered, so
    /// <paramref name="frames"/> is consumed no faster than the server infers; DROP answers frames past it
    /// <c>Dropped</c>. A refused frame is a result with <c>Error</c>; errors of the call itself (unknown model, bad
    /// options) throw <see cref="VisionRpcException"/> from the enumeration, and so does, after the answers before
    /// it, whatever <paramref name="frames"/> throws. Cancel the token (or stop enumerating) to end the call.
    /// </summary>
    public async IAsyncEnumerable<FrameResult> InferStreamAsync(
        IAsyncEnumerable<FrameInput> frames, InferStreamConfig? config = null, DateTime? deadline = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var call = _targets[Volatile.Read(ref _current)].Inference.InferStream(
            deadline: deadline, cancellationToken: cancellationToken);
        await foreach (var result in InferStreamCall.RunAsync(call, config ?? new InferStreamConfig(), frames, cancellationToken))
            yield return result;
    }

    public Task<ListModelsResponse> ListModelsAsync(CancellationToken cancellationToken = default) =>
        Unary(t => t.Models.ListModelsAsync(new ListModelsRequest(), Deadline(), cancellationToken: cancellationToken).ResponseAsync, cancellationToken);

    public async Task<Model> GetModelAsync(string modelId, CancellationToken cancellationToken = default) =>
        (await Unary(t => t.Models.GetModelAsync(new GetModelRequest { ModelId = modelId }, Deadline(), cancellationToken: cancellationToken).ResponseAsync, cancellationToken)).Model;

    public async Task<Model> LoadModelAsync(string modelId, CancellationToken cancellationToken = default) =>
        (await Unary(t => t.Models.LoadModelAsync(new LoadModelRequest { ModelId = modelId }, Deadline(), cancellationToken: cancellationToken).ResponseAsync, cancellationToken)).Model;

    public async Task<Model> UnloadModelAsync(string modelId, CancellationToken cancellationToken = default) =>
        (await Unary(t => t.Models.UnloadModelAsync(new UnloadModelRequest { ModelId = modelId }, Deadline(), cancellationToken: cancellationToken).ResponseAsync, cancellationToken)).Model;

    /// <summary>grpc.health.v1 status; "" is the whole server, "visionrpc.v1.InferenceService" is readiness.</summary>
    public async Task<HealthCheckResponse.Types.ServingStatus> HealthAsync(
        string service = "", CancellationToken cancellationToken = default) =>
        (await Unary(t => t.HealthCheck.CheckAsync(new HealthCheckRequest { Service = service }, Deadline(), cancellationToken: cancellationToken).ResponseAsync, cancellationToken)).Status;

    /// <summary>Closes every channel, cancelling calls in flight (streams are not resumed).</summary>
    public void Dispose()
    {
        _disposed = true;
        foreach (var target in _targets)
            target.Channel.Dispose();
    }

    private DateTime? Deadline() => _options.Timeout is { } timeout ? DateTime.UtcNow + timeout : null;

    /// <summary>Every unary RPC goes through here: one error mapping, one address choice.</summary>
    private async Task<T> Unary<T>(Func<Target, Task<T>> call, CancellationToken cancellationToken)
    {
        var index = Volatile.Read(ref _current);
        try
        {
            return await call(_targets[index]);
        }
        catch (RpcException e)
        {
            Failed(index, e, cancellationToken);
            throw VisionRpcException.From(e);
        }
    }

    /// <summary>One call of a stream subscription, on the current address; PredictionStream resumes across them.</summary>
    private async IAsyncEnumerable<StreamPredictionsResponse> StreamCallAsync(
        StreamPredictionsRequest request, DateTime? deadline, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var index = Volatile.Read(ref _current);
        // The affinity header: identical subscriptions reach one replica behind a hashing proxy (PipelineKey).
        using var call = _targets[index].Inference.StreamPredictions(
            request, PipelineKey.Headers(request), deadline, cancellationToken);
        var stream = call.ResponseStream;
        var answered = false;
        while (true)
        {
            bool more;
            try
            {
                more = await stream.MoveNext(cancellationToken);
            }
            catch (RpcException e)
            {
                // A server that answered and then lost the connection (recycled by max age, a proxy restart) most
                // likely still runs the stream: resume there, where it is replayed. One that did not answer, or says
                // it drains, is skipped.
                if (!answered || VisionRpcException.From(e).Reason == ShuttingDown)
                    Failed(index, e, cancellationToken);
                throw;
            }
            if (!more) yield break;
            answered = true;
            yield return stream.Current;
        }
    }

    /// <summary>
    /// A call on address <paramref name="index"/> found its server unavailable: when the failure is UNAVAILABLE or a
    /// dead connection (and not the caller's cancellation), later calls go to the next address. Only the first of
    /// several calls failing on the same address moves it, so concurrent failures do not skip an address.
    /// </summary>
    private void Failed(int index, RpcException error, CancellationToken cancellationToken)
    {
        if (!cancellationToken.IsCancellationRequested && !_disposed && ResumeState.IsResumable(error))
            Interlocked.CompareExchange(ref _current, (index + 1) % _targets.Count, index);
    }
}
