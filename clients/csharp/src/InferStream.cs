using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using Google.Protobuf;
using Grpc.Core;
using VisionRpc.V1;

namespace VisionRpc.Client;

/// <summary>
/// One frame sent on <see cref="VisionRpcClient.InferStreamAsync"/> (named apart from the message it becomes,
/// <c>VisionRpc.V1.InputFrame</c>, so code using both namespaces compiles): its image, the client's own numbering (it
/// must increase from one frame to the next of a source), which of the client's cameras it comes from, and its
/// time in that source in milliseconds (0: the time the server receives it; dwell times use it).
/// </summary>
public sealed record FrameInput(Image Image, ulong SequenceNumber, uint SourceIndex = 0, double TimestampMs = 0)
{
    /// <summary>A frame of encoded image bytes (JPEG, PNG, BMP, WebP).</summary>
    public static FrameInput FromBytes(byte[] encoded, ulong sequenceNumber, uint sourceIndex = 0, double timestampMs = 0) =>
        new(new Image { Encoded = ByteString.CopyFrom(encoded) }, sequenceNumber, sourceIndex, timestampMs);

    internal InferStreamRequest ToRequest() => new()
    {
        Frame = new V1.InputFrame
        {
            Image = Image,
            SequenceNumber = SequenceNumber,
            SourceIndex = SourceIndex,
            TimestampMs = TimestampMs,
        },
    };
}

/// <summary>
/// The answer to one frame, in the order the frames were sent: exactly one of <see cref="Prediction"/>,
/// <see cref="Dropped"/> (BACKPRESSURE_DROP: it arrived while MaxInFlight frames were inferred) or
/// <see cref="Error"/> (the server refused the frame; the call goes on). <see cref="Analytics"/> is set when the
/// config declared analytics.
/// </summary>
public sealed record FrameResult(
    ulong SequenceNumber,
    uint SourceIndex,
    string ModelName,
    string ModelVersion,
    ImagePrediction? Prediction,
    bool Dropped,
    VisionRpcException? Error,
    FrameAnalytics? Analytics)
{
    internal static FrameResult From(InferStreamResponse response) => new(
        response.SequenceNumber,
        response.SourceIndex,
        response.ModelName,
        response.ModelVersion,
        response.OutcomeCase == InferStreamResponse.OutcomeOneofCase.Prediction ? response.Prediction : null,
        response.OutcomeCase == InferStreamResponse.OutcomeOneofCase.Dropped && response.Dropped,
        response.OutcomeCase == InferStreamResponse.OutcomeOneofCase.Error ? VisionRpcException.FromStatus(response.Error) : null,
        response.Analytics);
}

/// <summary>The two halves of one InferStream call: a writer task sending the frames, the reader yielding answers.</summary>
internal static class InferStreamCall
{
    internal static async IAsyncEnumerable<FrameResult> RunAsync(
        AsyncDuplexStreamingCall<InferStreamRequest, InferStreamResponse> call,
        InferStreamConfig config,
        IAsyncEnumerable<FrameInput> frames,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        using (call)
        {
            var writer = WriteAsync(call.RequestStream, config, frames, cancellationToken);
            var responses = call.ResponseStream;
            while (true)
            {
                bool more;
                try
                {
                    more = await responses.MoveNext(cancellationToken);
                }
                catch (RpcException e)
                {
                    throw VisionRpcException.From(e);
                }
                if (!more)
                    break;
                yield return FrameResult.From(responses.Current);
            }
            // The caller's own exception (its frames, or an image), after the answers to the frames before it.
            await writer;
        }
    }

    /// <summary>
    /// Sends the config, then each frame as the call accepts it (WriteAsync waits while the server applies
    /// back-pressure), then half-closes. A call that ended meanwhile stops the writer quietly: the reader reports why.
    /// </summary>
    private static async Task WriteAsync(
        IClientStreamWriter<InferStreamRequest> requests,
        InferStreamConfig config,
        IAsyncEnumerable<FrameInput> frames,
        CancellationToken cancellationToken)
    {
        Exception? failure = null;
        try
        {
            await requests.WriteAsync(new InferStreamRequest { Config = config });
            await foreach (var frame in frames.WithCancellation(cancellationToken))
                await requests.WriteAsync(frame.ToRequest());
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException or OperationCanceledException)
        {
            return; // the call ended (or was cancelled): the reader reports how
        }
        catch (Exception e)
        {
            failure = e;
        }
        try
        {
            await requests.CompleteAsync();
        }
        catch (Exception e) when (e is RpcException or InvalidOperationException)
        {
        }
        if (failure is not null)
            ExceptionDispatchInfo.Throw(failure);
    }
}
