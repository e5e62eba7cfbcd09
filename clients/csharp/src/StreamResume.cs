using Grpc.Core;
using VisionRpc.V1;

namespace VisionRpc.Client;

/// <summary>
/// What the last resume of a stream cost: the server's account of it (the RESUMED status's
/// <see cref="ResumeGap"/>) and the downtime this client measured.
/// </summary>
/// <param name="Outcome">Replayed (nothing lost), Partial (<paramref name="MessagesLost"/> lost) or Restarted (a new
/// stream id; results between the break and the new STARTED are lost).</param>
/// <param name="PreviousStreamId">The stream that was resumed (the new messages' stream id differs when Restarted).</param>
/// <param name="MessagesLost">Partial: how many messages after the last one received could not be replayed.</param>
/// <param name="Downtime">From the break (the error of the broken call) to the first message of the call that resumed
/// it, backoff and failed attempts included.</param>
public sealed record StreamResumption(ResumeOutcome Outcome, string PreviousStreamId, ulong MessagesLost, TimeSpan Downtime);

/// <summary>
/// The bookkeeping behind resumable streams (docs/stream-resume.md): what a resume asks for, how long to wait
/// before asking, and which failures are worth asking again for. The same schedule in every SDK.
/// </summary>
internal sealed class ResumeState
{
    public const int DefaultMaxAttempts = 8;
    private static readonly TimeSpan BackoffInitial = TimeSpan.FromMilliseconds(50);
    private static readonly TimeSpan BackoffMax = TimeSpan.FromSeconds(2);
    private const double BackoffJitter = 0.2; // +-20%, so clients cut by the same drain do not come back in step

    private string _streamId = "";
    private ulong _afterCursor;
    private readonly List<ulong> _nextSequenceNumbers = new();

    /// <summary>Records one message the caller receives.</summary>
    public void Observe(StreamPredictionsResponse message)
    {
        if (message.StreamId.Length > 0 && message.StreamId != _streamId)
        {
            // The first message, or a Restarted resume: a cursor is a position in one stream and the new stream
            // counts from 1 again, so the old cursor would skip its first messages. Sequence numbers belong to
            // the sources and carry over.
            _streamId = message.StreamId;
            _afterCursor = 0;
        }
        if (message.Cursor != 0) // 0 marks a RESUMED status, which belongs to the subscription, not the stream
            _afterCursor = message.Cursor;
        if (message.PayloadCase == StreamPredictionsResponse.PayloadOneofCase.Frame)
        {
            var index = (int)message.Frame.SourceIndex;
            while (_nextSequenceNumbers.Count <= index)
                _nextSequenceNumbers.Add(0); // a source with no frame yet starts from 0
            _nextSequenceNumbers[index] = message.Frame.SequenceNumber + 1;
        }
    }

    /// <summary>
    /// The request that continues the stream: the original with <c>resume</c> set (its other fields still describe
    /// the stream, for a Restarted resume), or the original unchanged while nothing has arrived.
    /// </summary>
    public StreamPredictionsRequest Request(StreamPredictionsRequest original)
    {
        if (_streamId.Length == 0)
            return original;
        var request = original.Clone();
        request.Resume = new StreamResume { StreamId = _streamId, AfterCursor = _afterCursor };
        request.Resume.NextSequenceNumbers.AddRange(_nextSequenceNumbers);
        return request;
    }

    /// <summary>
    /// The wait before re-issue number <paramref name="attempt"/> (1 for the first after a break): 50 ms doubling to
    /// at most 2 s, scaled by 1 +- 20% with <paramref name="random"/> in [0, 1).
    /// </summary>
    public static TimeSpan Backoff(int attempt, double random)
    {
        var delay = BackoffInitial;
        for (var i = 1; i < attempt && delay < BackoffMax; i++)
            delay *= 2;
        if (delay > BackoffMax)
            delay = BackoffMax;
        return delay * (1 - BackoffJitter + 2 * BackoffJitter * random);
    }

    /// <summary>
    /// Whether a failed call is worth resuming: UNAVAILABLE (draining servers, recycled connections, refused
    /// connections), or a connection that died under the call and that Grpc.Net.Client reports under another code.
    /// Those statuses are made by the client from the exception it caught (<see cref="Status.DebugException"/>);
    /// statuses the server sent carry none. The caller's own cancellation is ruled out before this.
    /// </summary>
    public static bool IsResumable(RpcException error) =>
        error.StatusCode == StatusCode.Unavailable
        || (error.Status.DebugException is not null
            && error.StatusCode is StatusCode.Cancelled or StatusCode.Internal or StatusCode.Unknown);
}
