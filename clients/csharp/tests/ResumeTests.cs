using System.Runtime.CompilerServices;
using Grpc.Core;
using VisionRpc.V1;
using Xunit;

namespace VisionRpc.Client.Tests;

/// <summary>
/// Resuming streams without a server (docs/stream-resume.md): the bookkeeping, the backoff, which failures resume,
/// and PredictionStream driven by scripted calls.
/// </summary>
public class ResumeTests
{
    private static StreamPredictionsResponse StatusMessage(string streamId, ulong cursor, StreamEvent e) =>
        new() { StreamId = streamId, Cursor = cursor, Status = new StreamStatus { Event = e } };

    private static StreamPredictionsResponse Frame(string streamId, ulong cursor, ulong sequenceNumber, uint sourceIndex = 0) =>
        new() { StreamId = streamId, Cursor = cursor, Frame = new FramePrediction { SourceIndex = sourceIndex, SequenceNumber = sequenceNumber } };

    private static StreamPredictionsResponse Resumed(string streamId, string previous, ResumeOutcome outcome) =>
        new()
        {
            StreamId = streamId,
            Status = new StreamStatus
            {
                Event = StreamEvent.Resumed,
                Resume = new ResumeGap { Outcome = outcome, PreviousStreamId = previous },
            },
        };

    private static RpcException ServerStatus(StatusCode code) => new(new Status(code, code.ToString()));

    /// <summary>What Grpc.Net.Client reports for a connection that died: a status made from the exception it caught.</summary>
    private static RpcException ConnectionDied() =>
        new(new Status(StatusCode.Cancelled, "Error reading next message.", new IOException("The request was aborted.")));

    private static readonly StreamPredictionsRequest Original = new()
    {
        Sources = { new VideoSource { Path = "bikes.mp4" } },
        StreamOptions = new StreamOptions { Delivery = Delivery.EveryFrame },
    };

    [Theory]
    [InlineData(1, 50)]
    [InlineData(2, 100)]
    [InlineData(6, 1600)]
    [InlineData(7, 2000)]
    [InlineData(100, 2000)]
    public void BackoffDoublesUpToTwoSeconds(int attempt, double milliseconds) =>
        Assert.Equal(milliseconds, ResumeState.Backoff(attempt, 0.5).TotalMilliseconds, 3);

    [Fact]
    public void BackoffJittersByTwentyPercent()
    {
        Assert.Equal(40, ResumeState.Backoff(1, 0).TotalMilliseconds, 3);
        Assert.Equal(60, ResumeState.Backoff(1, 1).TotalMilliseconds, 3);
    }

    [Fact]
    public void ResumableFailures()
    {
        Assert.True(ResumeState.IsResumable(ServerStatus(StatusCode.Unavailable)));
        Assert.True(ResumeState.IsResumable(ConnectionDied()));
        Assert.False(ResumeState.IsResumable(ServerStatus(StatusCode.Cancelled)));
        Assert.False(ResumeState.IsResumable(ServerStatus(StatusCode.Internal)));
        Assert.False(ResumeState.IsResumable(ServerStatus(StatusCode.NotFound)));
        Assert.False(ResumeState.IsResumable(ServerStatus(StatusCode.DeadlineExceeded)));
    }

    [Fact]
    public void NothingReceivedReissuesTheOriginalRequest() =>
        Assert.Same(Original, new ResumeState().Request(Original));

    [Fact]
    public void ResumesAfterTheLastCursorWithTheNextSequenceNumbers()
    {
        var state = new ResumeState();
        state.Observe(StatusMessage("s1", 1, StreamEvent.Started));
        state.Observe(Frame("s1", 2, 5, sourceIndex: 0));
        state.Observe(Frame("s1", 3, 9, sourceIndex: 2));
        state.Observe(Resumed("s1", "s1", ResumeOutcome.Replayed)); // cursor 0: keeps the cursor
        var request = state.Request(Original);
        Assert.Equal("s1", request.Resume.StreamId);
        Assert.Equal(3UL, request.Resume.AfterCursor);
        Assert.Equal(new ulong[] { 6, 0, 10 }, request.Resume.NextSequenceNumbers);
        Assert.Equal("bikes.mp4", request.Sources[0].Path);
        Assert.Null(Original.Resume);
    }

    [Fact]
    public void ARestartedStreamCountsCursorsFromItsOwnStart()
    {
        var state = new ResumeState();
        state.Observe(StatusMessage("s1", 1, StreamEvent.Started));
        state.Observe(Frame("s1", 40, 38));
        state.Observe(Resumed("s2", "s1", ResumeOutcome.Restarted));
        var request = state.Request(Original);
        Assert.Equal("s2", request.Resume.StreamId);
        Assert.Equal(0UL, request.Resume.AfterCursor);
        Assert.Equal(new ulong[] { 39 }, request.Resume.NextSequenceNumbers);
    }

    /// <summary>Calls that play scripts in order (messages, then an error or a normal end) and record each request.</summary>
    private sealed class ScriptedCalls
    {
        private readonly Queue<(StreamPredictionsResponse[] Messages, RpcException? Error)> _scripts;
        public List<StreamPredictionsRequest> Requests { get; } = new();
        public bool Disposed { get; set; }

        public ScriptedCalls(params (StreamPredictionsResponse[] Messages, RpcException? Error)[] scripts) =>
            _scripts = new Queue<(StreamPredictionsResponse[], RpcException?)>(scripts);

        public async IAsyncEnumerable<StreamPredictionsResponse> Open(
            StreamPredictionsRequest request, DateTime? deadline, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            Requests.Add(request);
            var (messages, error) = _scripts.Count > 0
                ? _scripts.Dequeue()
                : (Array.Empty<StreamPredictionsResponse>(), ServerStatus(StatusCode.Internal));
            foreach (var message in messages)
            {
                await Task.Yield();
                yield return message;
            }
            if (error is not null)
                throw error;
        }

        public PredictionStream Stream(int maxResumeAttempts = 8, bool resume = true, CancellationToken cancellationToken = default) =>
            new(Open, () => Disposed, Original, null, cancellationToken, resume, maxResumeAttempts, _ => TimeSpan.FromMilliseconds(1));
    }

    private static async Task<List<StreamPredictionsResponse>> Collect(PredictionStream stream)
    {
        var messages = new List<StreamPredictionsResponse>();
        await foreach (var message in stream)
            messages.Add(message);
        return messages;
    }

    [Fact]
    public async Task ABrokenCallIsReissuedAfterTheLastCursor()
    {
        var calls = new ScriptedCalls(
            (new[] { StatusMessage("s1", 1, StreamEvent.Started), Frame("s1", 2, 0) }, ServerStatus(StatusCode.Unavailable)),
            (new[] { Resumed("s1", "s1", ResumeOutcome.Replayed), Frame("s1", 3, 1), StatusMessage("s1", 4, StreamEvent.SourceEnded) }, null));
        var stream = calls.Stream();
        var messages = await Collect(stream);

        Assert.Equal(5, messages.Count);
        Assert.Same(Original, calls.Requests[0]);
        Assert.Equal(2UL, calls.Requests[1].Resume.AfterCursor);
        Assert.Equal(new ulong[] { 1 }, calls.Requests[1].Resume.NextSequenceNumbers);
        Assert.Equal(1, stream.Resumes);
        Assert.NotNull(stream.LastResumption);
        Assert.Equal(ResumeOutcome.Replayed, stream.LastResumption!.Outcome);
        Assert.True(stream.LastResumption.Downtime > TimeSpan.Zero);
    }

    [Fact]
    public async Task GivesUpAfterMaxResumeAttemptsWithTheLastError()
    {
        var calls = new ScriptedCalls(
            (new[] { StatusMessage("s1", 1, StreamEvent.Started) }, ConnectionDied()),
            (Array.Empty<StreamPredictionsResponse>(), ServerStatus(StatusCode.Unavailable)),
            (Array.Empty<StreamPredictionsResponse>(), ServerStatus(StatusCode.Unavailable)));
        var error = await Assert.ThrowsAsync<VisionRpcException>(() => Collect(calls.Stream(maxResumeAttempts: 2)));
        Assert.Equal(StatusCode.Unavailable, error.Code);
        Assert.Equal(3, calls.Requests.Count);
    }

    [Fact]
    public async Task AnyOtherStatusEndsTheStreamAtOnce()
    {
        var calls = new ScriptedCalls((new[] { StatusMessage("s1", 1, StreamEvent.Started) }, ServerStatus(StatusCode.FailedPrecondition)));
        var error = await Assert.ThrowsAsync<VisionRpcException>(() => Collect(calls.Stream()));
        Assert.Equal(StatusCode.FailedPrecondition, error.Code);
        Assert.Single(calls.Requests);
    }

    [Fact]
    public async Task ResumeOffThrowsTheFirstUnavailable()
    {
        var calls = new ScriptedCalls((new[] { StatusMessage("s1", 1, StreamEvent.Started) }, ServerStatus(StatusCode.Unavailable)));
        await Assert.ThrowsAsync<VisionRpcException>(() => Collect(calls.Stream(resume: false)));
        Assert.Single(calls.Requests);
    }

    [Fact]
    public async Task ADisposedClientDoesNotResume()
    {
        var calls = new ScriptedCalls((new[] { StatusMessage("s1", 1, StreamEvent.Started) }, ConnectionDied())) { Disposed = true };
        await Assert.ThrowsAsync<VisionRpcException>(() => Collect(calls.Stream()));
        Assert.Single(calls.Requests);
    }
}
