package visionrpc_test

// Stream resume (docs/stream-resume.md) against scripted servers that break their calls: on bufconn for the
// bookkeeping and the attempt cap, and on two real TCP servers behind an "ipv4:" target for a transport failure
// that moves the stream to the other server.

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

// resumingServer plays one file stream of `frames` frames as a visionrpc server numbers it: cursor 1 is
// STARTED, then one frame per cursor, then SOURCE_ENDED. It honours StreamResume: a known stream id replays
// after the cursor, an unknown one restarts the stream under its own id at the requested sequence number.
type resumingServer struct {
	visionrpcv1.UnimplementedInferenceServiceServer

	streamID string
	frames   uint64
	// breakErr, when set, ends every call with it after breakAfter messages (0: before any).
	breakErr   error
	breakAfter int
	// interval paces the messages (0: as fast as the client reads).
	interval time.Duration

	mu       sync.Mutex
	requests []*visionrpcv1.StreamPredictionsRequest
}

func (f *resumingServer) StreamPredictions(
	req *visionrpcv1.StreamPredictionsRequest, stream grpc.ServerStreamingServer[visionrpcv1.StreamPredictionsResponse],
) error {
	f.mu.Lock()
	f.requests = append(f.requests, req)
	f.mu.Unlock()

	var queue []*visionrpcv1.StreamPredictionsResponse
	cursor, firstSeq := uint64(1), uint64(0)
	if r := req.GetResume(); r != nil {
		outcome := visionrpcv1.ResumeOutcome_RESUME_OUTCOME_REPLAYED
		if r.GetStreamId() == f.streamID {
			cursor = r.GetAfterCursor() + 1
		} else {
			outcome = visionrpcv1.ResumeOutcome_RESUME_OUTCOME_RESTARTED
			if next := r.GetNextSequenceNumbers(); len(next) > 0 {
				firstSeq = next[0]
			}
		}
		queue = append(queue, &visionrpcv1.StreamPredictionsResponse{StreamId: f.streamID, Payload: &visionrpcv1.StreamPredictionsResponse_Status{
			Status: &visionrpcv1.StreamStatus{
				Event:  visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED,
				Resume: &visionrpcv1.ResumeGap{Outcome: outcome, PreviousStreamId: r.GetStreamId()},
			},
		}})
	}
	last := f.frames - firstSeq + 2 // STARTED, the frames, SOURCE_ENDED
	for ; cursor <= last; cursor++ {
		msg := &visionrpcv1.StreamPredictionsResponse{StreamId: f.streamID, Cursor: cursor}
		switch cursor {
		case 1:
			msg.Payload = statusPayload(visionrpcv1.StreamEvent_STREAM_EVENT_STARTED)
		case last:
			msg.Payload = statusPayload(visionrpcv1.StreamEvent_STREAM_EVENT_SOURCE_ENDED)
		default:
			msg.Payload = &visionrpcv1.StreamPredictionsResponse_Frame{Frame: &visionrpcv1.FramePrediction{SequenceNumber: firstSeq + cursor - 2}}
		}
		queue = append(queue, msg)
	}
	for sent, msg := range queue {
		if f.breakErr != nil && sent == f.breakAfter {
			return f.breakErr
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		select {
		case <-stream.Context().Done():
			return stream.Context().Err()
		case <-time.After(f.interval):
		}
	}
	return nil
}

func (f *resumingServer) seen() []*visionrpcv1.StreamPredictionsRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.requests)
}

func statusPayload(event visionrpcv1.StreamEvent) *visionrpcv1.StreamPredictionsResponse_Status {
	return &visionrpcv1.StreamPredictionsResponse_Status{Status: &visionrpcv1.StreamStatus{Event: event}}
}

// startResumingFake serves f on an in-memory listener and dials it with opts.
func startResumingFake(t *testing.T, f *resumingServer, opts ...visionrpc.Option) *visionrpc.Client {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer()
	visionrpcv1.RegisterInferenceServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
	client, err := visionrpc.Dial(context.Background(), "passthrough:///bufnet", append([]visionrpc.Option{visionrpc.WithDialOptions(dialer)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

// drain reads the stream to its end: every message, and the error unless the end was io.EOF.
func drain(stream *visionrpc.PredictionStream) ([]*visionrpcv1.StreamPredictionsResponse, error) {
	var msgs []*visionrpcv1.StreamPredictionsResponse
	for msg, err := range stream.All() {
		if err != nil {
			return msgs, err
		}
		msgs = append(msgs, msg)
	}
	return msgs, nil
}

// shape summarises what the caller saw: "S" STARTED, "R" RESUMED, "E" SOURCE_ENDED, a frame by its sequence
// number.
func shape(msgs []*visionrpcv1.StreamPredictionsResponse) []string {
	var out []string
	for _, m := range msgs {
		if f := m.GetFrame(); f != nil {
			out = append(out, string(rune('0'+f.GetSequenceNumber())))
			continue
		}
		out = append(out, map[visionrpcv1.StreamEvent]string{
			visionrpcv1.StreamEvent_STREAM_EVENT_STARTED:      "S",
			visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED:      "R",
			visionrpcv1.StreamEvent_STREAM_EVENT_SOURCE_ENDED: "E",
		}[m.GetStatus().GetEvent()])
	}
	return out
}

var (
	unavailable = status.Error(codes.Unavailable, "connection recycled")
	internal    = status.Error(codes.Internal, "a bug")
)

func shuttingDown() error {
	st, _ := status.New(codes.Unavailable, "server shutting down").WithDetails(
		&errdetails.ErrorInfo{Reason: "SHUTTING_DOWN", Domain: "visionrpc.dev"})
	return st.Err()
}

func TestStreamResumes(t *testing.T) {
	for _, tc := range []struct {
		name       string
		server     *resumingServer
		opts       []visionrpc.Option
		want       []string
		wantCode   codes.Code // OK: a clean end
		wantReason string
		wantCalls  int
	}{
		{
			name:      "never broken",
			server:    &resumingServer{streamID: "s1", frames: 4},
			want:      []string{"S", "0", "1", "2", "3", "E"},
			wantCalls: 1,
		},
		{
			// Every call delivers 3 messages, a RESUMED status first from the second on.
			name:      "UNAVAILABLE every 3 messages: nothing lost, nothing twice",
			server:    &resumingServer{streamID: "s1", frames: 4, breakErr: unavailable, breakAfter: 3},
			want:      []string{"S", "0", "1", "R", "2", "3", "R", "E"},
			wantCalls: 3,
		},
		{
			name:      "a drain (UNAVAILABLE SHUTTING_DOWN) is resumed too",
			server:    &resumingServer{streamID: "s1", frames: 2, breakErr: shuttingDown(), breakAfter: 3},
			want:      []string{"S", "0", "1", "R", "E"},
			wantCalls: 2,
		},
		{
			name:      "other codes end the stream",
			server:    &resumingServer{streamID: "s1", frames: 4, breakErr: internal, breakAfter: 2},
			want:      []string{"S", "0"},
			wantCode:  codes.Internal,
			wantCalls: 1,
		},
		{
			name:       "WithoutStreamResume",
			server:     &resumingServer{streamID: "s1", frames: 4, breakErr: shuttingDown(), breakAfter: 2},
			opts:       []visionrpc.Option{visionrpc.WithoutStreamResume()},
			want:       []string{"S", "0"},
			wantCode:   codes.Unavailable,
			wantReason: "SHUTTING_DOWN",
			wantCalls:  1,
		},
		{
			name:       "gives up after the attempt cap, with the last error",
			server:     &resumingServer{streamID: "s1", frames: 4, breakErr: shuttingDown(), breakAfter: 0},
			opts:       []visionrpc.Option{visionrpc.WithStreamResumeAttempts(3)},
			wantCode:   codes.Unavailable,
			wantReason: "SHUTTING_DOWN",
			wantCalls:  4, // the first call and 3 attempts
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client := startResumingFake(t, tc.server, tc.opts...)
			req := streamRequest("bikes.mp4")
			stream, err := client.Stream(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := drain(stream)
			if got := shape(msgs); !slices.Equal(got, tc.want) {
				t.Errorf("received %v, want %v", got, tc.want)
			}
			var rpcErr *visionrpc.Error
			switch {
			case tc.wantCode == codes.OK && err != nil:
				t.Errorf("the stream ended with %v, want a clean end", err)
			case tc.wantCode != codes.OK && (!errors.As(err, &rpcErr) || rpcErr.Code != tc.wantCode || rpcErr.Reason != tc.wantReason):
				t.Errorf("the stream ended with %#v, want an *Error %v %q", err, tc.wantCode, tc.wantReason)
			}
			if calls := len(tc.server.seen()); calls != tc.wantCalls {
				t.Errorf("the server saw %d calls, want %d", calls, tc.wantCalls)
			}
			resumed := 0
			for _, m := range msgs {
				if m.GetStatus().GetEvent() == visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED {
					resumed++
				}
			}
			if stream.Resumes() != resumed {
				t.Errorf("Resumes() = %d, want %d (the RESUMED statuses)", stream.Resumes(), resumed)
			}
			if !proto.Equal(req, streamRequest("bikes.mp4")) {
				t.Errorf("the caller's request was changed: %v", req)
			}
		})
	}
}

func TestStreamResumeRequests(t *testing.T) {
	server := &resumingServer{streamID: "s1", frames: 4, breakErr: unavailable, breakAfter: 3}
	client := startResumingFake(t, server)
	stream, err := client.Stream(context.Background(), streamRequest("bikes.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drain(stream); err != nil {
		t.Fatal(err)
	}
	// Call 1: S(1) 0(2) 1(3); call 2: R 2(4) 3(5); call 3: R E(6).
	want := []*visionrpcv1.StreamResume{
		nil,
		{StreamId: "s1", AfterCursor: 3, NextSequenceNumbers: []uint64{2}},
		{StreamId: "s1", AfterCursor: 5, NextSequenceNumbers: []uint64{4}},
	}
	requests := server.seen()
	if len(requests) != len(want) {
		t.Fatalf("%d calls, want %d", len(requests), len(want))
	}
	for i, req := range requests {
		if !proto.Equal(req.GetResume(), want[i]) || req.GetSources()[0].GetPath() != "bikes.mp4" {
			t.Errorf("call %d: %v, want the original request with resume %v", i, req, want[i])
		}
	}
	gap := stream.LastGap()
	if gap.Outcome != visionrpcv1.ResumeOutcome_RESUME_OUTCOME_REPLAYED || gap.PreviousStreamID != "s1" || gap.MessagesLost != 0 {
		t.Errorf("LastGap() = %+v, want REPLAYED of s1", gap)
	}
	// The first attempt waits 50 ms +-20%.
	if gap.Downtime < 40*time.Millisecond || gap.Downtime > 5*time.Second {
		t.Errorf("LastGap().Downtime = %v, want the 40-60 ms backoff and a little more", gap.Downtime)
	}
}

func TestStreamRetriesTheOriginalRequestUntilAMessageArrives(t *testing.T) {
	server := &resumingServer{streamID: "s1", frames: 1, breakErr: unavailable, breakAfter: 0}
	client := startResumingFake(t, server, visionrpc.WithStreamResumeAttempts(2))
	stream, err := client.Stream(context.Background(), streamRequest("bikes.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := drain(stream); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
	for i, req := range server.seen() {
		if req.GetResume() != nil {
			t.Errorf("call %d has resume %v, want the original request (nothing arrived to resume)", i, req.GetResume())
		}
	}
	if stream.Resumes() != 0 || stream.LastGap() != (visionrpc.ResumeGap{}) {
		t.Errorf("Resumes() = %d, LastGap() = %+v; want none", stream.Resumes(), stream.LastGap())
	}
}

func TestStreamEndsDuringResumeBackoff(t *testing.T) {
	for _, tc := range []struct {
		name     string
		end      func(stream *visionrpc.PredictionStream, cancel context.CancelFunc)
		wantCode codes.Code // OK: io.EOF
	}{
		{name: "Close is a clean end", end: func(s *visionrpc.PredictionStream, _ context.CancelFunc) { s.Close() }},
		{name: "ctx cancelled", end: func(_ *visionrpc.PredictionStream, cancel context.CancelFunc) { cancel() }, wantCode: codes.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Every call fails at once: with 8 attempts the stream would wait about 7 s before giving up.
			client := startResumingFake(t, &resumingServer{streamID: "s1", frames: 1, breakErr: unavailable, breakAfter: 0})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream, err := client.Stream(ctx, streamRequest("bikes.mp4"))
			if err != nil {
				t.Fatal(err)
			}
			time.AfterFunc(300*time.Millisecond, func() { tc.end(stream, cancel) })
			start := time.Now()
			_, err = stream.Recv()
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("Recv returned after %v, want soon after the end", took)
			}
			if tc.wantCode == codes.OK {
				if err != io.EOF {
					t.Errorf("Recv: %v, want io.EOF", err)
				}
				return
			}
			var rpcErr *visionrpc.Error
			if !errors.As(err, &rpcErr) || rpcErr.Code != tc.wantCode || !errors.Is(err, context.Canceled) {
				t.Errorf("Recv: %#v, want a %v *Error wrapping context.Canceled", err, tc.wantCode)
			}
		})
	}
}

func TestDialRefusesABadAddressList(t *testing.T) {
	for _, target := range []string{"ipv4:", "ipv4:localhost:50051", "ipv4:127.0.0.1:50051,127.0.0.1:99999"} {
		if _, err := visionrpc.Dial(context.Background(), target); err == nil {
			t.Errorf("Dial(%q) accepted it", target)
		}
	}
	if _, err := visionrpc.Dial(context.Background(), "127.0.0.1:1", visionrpc.WithStreamResumeAttempts(0)); err == nil {
		t.Error("WithStreamResumeAttempts(0): Dial accepted it")
	}
}

// listenTCP serves impl on a loopback port; stop closes the listener and every connection, like a server gone.
func listenTCP(t *testing.T, impl visionrpcv1.InferenceServiceServer) (address string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	visionrpcv1.RegisterInferenceServiceServer(srv, impl)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), srv.Stop
}

func TestStreamMovesToTheNextAddressWhenItsServerGoesAway(t *testing.T) {
	first := &resumingServer{streamID: "a", frames: 100, interval: 20 * time.Millisecond}
	second := &resumingServer{streamID: "b", frames: 8}
	addrA, stopA := listenTCP(t, first)
	addrB, _ := listenTCP(t, second)
	client, err := visionrpc.Dial(context.Background(), "ipv4:"+addrA+","+addrB)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := client.Stream(ctx, streamRequest("bikes.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*visionrpcv1.StreamPredictionsResponse
	for msg, err := range stream.All() {
		if err != nil {
			t.Fatalf("after %v: %v", shape(msgs), err)
		}
		msgs = append(msgs, msg)
		if len(msgs) == 4 {
			stopA() // the connection closes under the stream: a transport failure, UNAVAILABLE
		}
	}
	// pick_first kept the first address until it went away; the second one restarts the file where it broke.
	if got, want := shape(msgs), []string{"S", "0", "1", "2", "R", "S", "3", "4", "5", "6", "7", "E"}; !slices.Equal(got, want) {
		t.Errorf("received %v, want %v", got, want)
	}
	requests := second.seen()
	if len(requests) != 1 || !proto.Equal(requests[0].GetResume(), &visionrpcv1.StreamResume{StreamId: "a", AfterCursor: 4, NextSequenceNumbers: []uint64{3}}) {
		t.Errorf("the second server saw %v, want one resume of a after cursor 4", requests)
	}
	gap := stream.LastGap()
	if stream.Resumes() != 1 || gap.Outcome != visionrpcv1.ResumeOutcome_RESUME_OUTCOME_RESTARTED || gap.PreviousStreamID != "a" {
		t.Errorf("Resumes() = %d, LastGap() = %+v; want one RESTARTED of a", stream.Resumes(), gap)
	}
	if msgs[len(msgs)-1].GetStreamId() != "b" {
		t.Errorf("the last message is of stream %q, want b", msgs[len(msgs)-1].GetStreamId())
	}
}
