package visionrpc

import (
	"context"
	"errors"
	"io"
	"iter"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// PathSource is a video file below the server's media root, e.g. "clips/bikes.mp4".
func PathSource(path string) *visionrpcv1.VideoSource {
	return &visionrpcv1.VideoSource{Source: &visionrpcv1.VideoSource_Path{Path: path}}
}

// URLSource is an http(s) video or MJPEG URL, or an rtsp URL (subject to the server's allow-list).
func URLSource(url string) *visionrpcv1.VideoSource {
	return &visionrpcv1.VideoSource{Source: &visionrpcv1.VideoSource_Url{Url: url}}
}

// DeviceSource is a capture device index on the server (refused unless the server enables devices).
func DeviceSource(index uint32) *visionrpcv1.VideoSource {
	return &visionrpcv1.VideoSource{Source: &visionrpcv1.VideoSource_Device{Device: index}}
}

// Stream subscribes to the predictions of a server-side video pipeline. Identical requests share one pipeline
// on the server (decoded and inferred once); req.StreamId joins a running one instead.
//
// The stream has no deadline of its own (the client's timeout does not apply): it lasts until the server ends
// it, ctx is done, or Close is called. Errors the server answers at once (an unknown model, a missing file, a
// URL outside the allow-list) surface from the first Recv, as *Error.
//
// A stream outlives its connection (docs/stream-resume.md): when the call breaks with UNAVAILABLE (connection
// recycled by max age, server drained or gone), Recv re-issues req with StreamPredictionsRequest.Resume set to
// the last stream id, cursor and per-source sequence numbers received, after a backoff of 50 ms doubling up to
// 2 s (+-20% jitter). The first message of the resumed call is a STREAM_EVENT_RESUMED status saying whether
// anything was lost; LastGap and Resumes tell the same. After DefaultStreamResumeAttempts calls in a row
// without a message, Recv returns the last error. WithoutStreamResume turns this off.
//
//	stream, err := client.Stream(ctx, &visionrpcv1.StreamPredictionsRequest{
//		Sources:       []*visionrpcv1.VideoSource{visionrpc.PathSource("bikes.mp4")},
//		StreamOptions: &visionrpcv1.StreamOptions{MaxFps: proto.Float32(10)},
//	})
//	if err != nil { ... }
//	defer stream.Close()
//	for msg, err := range stream.All() { ... }
func (c *Client) Stream(ctx context.Context, req *visionrpcv1.StreamPredictionsRequest) (*PredictionStream, error) {
	ctx, cancel := context.WithCancel(withPipelineKey(ctx, req)) // stream affinity: see PipelineKey
	s := &PredictionStream{
		ctx:         ctx,
		cancel:      cancel,
		open:        c.inference.StreamPredictions,
		req:         proto.CloneOf(req), // resumes re-issue the request as it was, whatever the caller does with it
		maxAttempts: c.streamResumeAttempts,
	}
	call, err := s.open(ctx, req)
	if err != nil {
		mapped := fromError(ctx, err) // before cancel, which would make any Canceled look caused by ctx
		if !s.resumable(mapped) {
			cancel()
			return nil, mapped
		}
		s.broke(mapped) // no server answered yet: the first Recv retries as it would resume
		return s, nil
	}
	s.call = call
	return s, nil
}

type streamCall = grpc.ServerStreamingClient[visionrpcv1.StreamPredictionsResponse]

// PredictionStream is one subscription: frames (GetFrame) and status events (GetStatus) in the order the
// server sends them, across resumed calls. Recv and All are for one goroutine; Close, Resumes and LastGap may be
// called from any.
type PredictionStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	open   func(context.Context, *visionrpcv1.StreamPredictionsRequest, ...grpc.CallOption) (streamCall, error)
	req    *visionrpcv1.StreamPredictionsRequest // as the caller gave it; resumes send a copy with Resume set

	// Owned by Recv's goroutine.
	call        streamCall // nil while broken
	maxAttempts int        // 0: no resume
	attempts    int        // calls re-issued since the last message
	lastErr     error      // why the last call broke
	brokeAt     time.Time  // when the current break began; zero when not broken
	point       resumePoint

	mu      sync.Mutex // guards what the accessors read
	resumes int
	lastGap ResumeGap

	closed atomic.Bool
}

// Recv returns the next message. It returns io.EOF once the server has ended the stream normally, or after
// Close; any other end is an *Error: the server's status, or codes.Canceled / codes.DeadlineExceeded when the
// stream's context ended it (errors.Is(err, context.Canceled) holds then). A break with UNAVAILABLE is resumed
// inside Recv (see Client.Stream) and returned only once resuming gives up.
func (s *PredictionStream) Recv() (*visionrpcv1.StreamPredictionsResponse, error) {
	for {
		if s.isClosed() {
			s.cancel() // releases the context's resources
			return nil, io.EOF
		}
		if s.call == nil {
			if err := s.reissue(); err != nil {
				return nil, s.end(err)
			}
			continue
		}
		msg, err := s.call.Recv()
		if err == nil {
			s.received(msg)
			return msg, nil
		}
		if errors.Is(err, io.EOF) {
			return nil, s.end(io.EOF)
		}
		mapped := fromError(s.ctx, err) // before cancel: the context's own error, if any, is the cause
		if !s.resumable(mapped) {
			return nil, s.end(mapped)
		}
		s.broke(mapped)
	}
}

// end finishes the stream with err; our own Close is a normal end (io.EOF), not an error.
func (s *PredictionStream) end(err error) error {
	s.cancel()
	if s.isClosed() {
		return io.EOF
	}
	return err
}

// resumable reports whether a call that failed with err is to be re-issued: only UNAVAILABLE (the one retryable
// status, which is also what grpc-go makes of a lost connection), and never once the caller cancelled.
func (s *PredictionStream) resumable(err error) bool {
	var rpcErr *Error
	return s.maxAttempts > 0 && s.ctx.Err() == nil && !s.isClosed() &&
		errors.As(err, &rpcErr) && rpcErr.Code == codes.Unavailable
}

func (s *PredictionStream) broke(err error) {
	s.call, s.lastErr = nil, err
	if s.brokeAt.IsZero() {
		s.brokeAt = time.Now()
	}
}

// reissue waits its backoff and re-issues the request, resumed where the caller is. A call that fails to open
// with UNAVAILABLE counts as an attempt and leaves the stream broken; any other failure ends the stream.
func (s *PredictionStream) reissue() error {
	if s.attempts >= s.maxAttempts {
		return s.lastErr
	}
	timer := time.NewTimer(resumeBackoff(s.attempts, rand.Float64()))
	defer timer.Stop()
	select {
	case <-s.ctx.Done():
		return fromError(s.ctx, s.ctx.Err())
	case <-timer.C:
	}
	s.attempts++
	call, err := s.open(s.ctx, s.point.request(s.req))
	if err != nil {
		mapped := fromError(s.ctx, err)
		if !s.resumable(mapped) {
			return mapped
		}
		s.lastErr = mapped
		return nil
	}
	s.call = call
	return nil
}

// received records a message before the caller sees it.
func (s *PredictionStream) received(msg *visionrpcv1.StreamPredictionsResponse) {
	if status := msg.GetStatus(); status.GetEvent() == visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED {
		gap := ResumeGap{
			Outcome:          status.GetResume().GetOutcome(),
			PreviousStreamID: status.GetResume().GetPreviousStreamId(),
			MessagesLost:     status.GetResume().GetMessagesLost(),
		}
		if !s.brokeAt.IsZero() { // zero when the caller's own request carried Resume
			gap.Downtime = time.Since(s.brokeAt)
		}
		s.mu.Lock()
		s.resumes++
		s.lastGap = gap
		s.mu.Unlock()
	}
	s.attempts, s.brokeAt = 0, time.Time{}
	s.point.observe(msg)
}

// Resumes is the number of times the stream was resumed: the RESUMED statuses received so far.
func (s *PredictionStream) Resumes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumes
}

// LastGap describes the last resume (the zero ResumeGap before any): its outcome, the stream resumed, the
// messages lost and the downtime the client measured.
func (s *PredictionStream) LastGap() ResumeGap {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastGap
}

// All iterates over the messages until the stream ends. A normal end stops the loop; any other end is
// yielded once as the error (with a nil message) before stopping. Breaking out of the loop closes the stream.
func (s *PredictionStream) All() iter.Seq2[*visionrpcv1.StreamPredictionsResponse, error] {
	return func(yield func(*visionrpcv1.StreamPredictionsResponse, error) bool) {
		for {
			msg, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(msg, err) {
				s.Close()
				return
			}
			if err != nil {
				return
			}
		}
	}
}

// Close unsubscribes: the RPC is cancelled and the server frees the subscription at once (a resume waiting for
// its backoff stops too); Recv returns io.EOF from then on. It is idempotent and safe from any goroutine.
func (s *PredictionStream) Close() {
	s.closed.Store(true)
	s.cancel()
}

func (s *PredictionStream) isClosed() bool { return s.closed.Load() }
