using System.Diagnostics;
using System.Runtime.CompilerServices;
using Grpc.Core;
using VisionRpc.V1;

namespace VisionRpc.Client;

/// <summary>
/// One subscription to a server-side video pipeline, as <see cref="VisionRpcClient.StreamAsync"/> returns it:
/// enumerate it with <c>await foreach</c>; each enumeration is one subscription. Cancel the token (or stop
/// enumerating) to unsubscribe, which frees the subscription on the server at once; that ends the enumeration
/// without an error.
/// <para>
/// A subscription outlives its calls (docs/stream-resume.md): when a call fails with UNAVAILABLE or its connection
/// dies, the stream waits a backoff (50 ms doubling to 2 s, +-20% jitter) and re-issues the request with
/// <c>resume</c> set (with several addresses, on the next one when this one does not answer or drains). The server
/// continues after the last message received (or starts the stream again and says so); the enumeration goes on,
/// with a RESUMED status at each seam (<see cref="LastResumption"/> adds the downtime measured here). After
/// <see cref="VisionRpcClientOptions.MaxResumeAttempts"/> consecutive re-issued calls without a message it throws
/// the last error; any other status ends it at once.
/// </para>
/// </summary>
public sealed class PredictionStream : IAsyncEnumerable<StreamPredictionsResponse>
{
    /// <summary>Opens one call of the subscription (the client picks the address).</summary>
    internal delegate IAsyncEnumerable<StreamPredictionsResponse> OpenCall(
        StreamPredictionsRequest request, DateTime? deadline, CancellationToken cancellationToken);

    private readonly OpenCall _open;
    private readonly Func<bool> _clientDisposed;
    private readonly StreamPredictionsRequest _request;
    private readonly DateTime? _deadline;
    private readonly CancellationToken _cancellationToken;
    private readonly bool _resume;
    private readonly int _maxResumeAttempts;
    private readonly Func<int, TimeSpan> _backoff;

    internal PredictionStream(
        OpenCall open, Func<bool> clientDisposed, StreamPredictionsRequest request, DateTime? deadline,
        CancellationToken cancellationToken, bool resume, int maxResumeAttempts, Func<int, TimeSpan>? backoff = null)
    {
        if (maxResumeAttempts < 1)
            throw new ArgumentOutOfRangeException(nameof(maxResumeAttempts), maxResumeAttempts, "expected >= 1");
        _open = open;
        _clientDisposed = clientDisposed;
        _request = request;
        _deadline = deadline;
        _cancellationToken = cancellationToken;
        _resume = resume;
        _maxResumeAttempts = maxResumeAttempts;
        _backoff = backoff ?? (attempt => ResumeState.Backoff(attempt, Random.Shared.NextDouble()));
    }

    /// <summary>How many times the latest enumeration re-issued its subscription after a break.</summary>
    public int Resumes { get; private set; }

    /// <summary>
    /// The latest RESUMED status's gap with the downtime measured here; set just before that status is yielded, so
    /// it describes the status in hand. Null until the first resume.
    /// </summary>
    public StreamResumption? LastResumption { get; private set; }

    /// <inheritdoc />
    public IAsyncEnumerator<StreamPredictionsResponse> GetAsyncEnumerator(CancellationToken cancellationToken = default) =>
        // The compiler links this token with the one given to StreamAsync ([EnumeratorCancellation]).
        ReceiveAsync(_cancellationToken).GetAsyncEnumerator(cancellationToken);

    /// <summary>Every message of every call of the subscription, resuming across breaks.</summary>
    private async IAsyncEnumerable<StreamPredictionsResponse> ReceiveAsync(
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        Resumes = 0;
        LastResumption = null;
        var state = new ResumeState();
        var failures = 0; // consecutive failed calls since the last message
        long? brokeAt = null; // Stopwatch timestamp of the break; null while the subscription is whole
        while (true)
        {
            RpcException? broken = null;
            await using (var messages = _open(state.Request(_request), _deadline, cancellationToken)
                             .GetAsyncEnumerator(cancellationToken))
            {
                // Left only through the condition (so `broken` is set after it), a normal end or an error.
                while (broken is null)
                {
                    bool more;
                    try
                    {
                        more = await messages.MoveNextAsync();
                    }
                    catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && cancellationToken.IsCancellationRequested)
                    {
                        yield break; // our own cancellation is a normal end
                    }
                    catch (RpcException e)
                    {
                        if (!_resume || _clientDisposed() || !ResumeState.IsResumable(e) || failures >= _maxResumeAttempts)
                            throw VisionRpcException.From(e);
                        broken = e;
                        continue;
                    }
                    if (!more)
                        yield break;
                    var message = messages.Current;
                    failures = 0;
                    if (message.Status?.Event == StreamEvent.Resumed)
                    {
                        var gap = message.Status.Resume ?? new ResumeGap();
                        var downtime = brokeAt is { } start ? Stopwatch.GetElapsedTime(start) : TimeSpan.Zero;
                        LastResumption = new StreamResumption(gap.Outcome, gap.PreviousStreamId, gap.MessagesLost, downtime);
                    }
                    brokeAt = null;
                    state.Observe(message);
                    yield return message;
                }
            }

            failures++;
            brokeAt ??= Stopwatch.GetTimestamp();
            if (!await DelayAsync(_backoff(failures), cancellationToken))
                yield break; // cancelled while waiting
            if (_clientDisposed())
                throw VisionRpcException.From(broken); // disposed while waiting: the break is the last word
            if (_deadline is { } deadline && DateTime.UtcNow >= deadline)
                throw VisionRpcException.From(new RpcException(
                    new Status(StatusCode.DeadlineExceeded, "the stream's deadline passed while resuming", broken)));
            Resumes++;
        }
    }

    /// <summary>Waits; false when <paramref name="cancellationToken"/> cut the wait short.</summary>
    private static async Task<bool> DelayAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(delay, cancellationToken);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}
