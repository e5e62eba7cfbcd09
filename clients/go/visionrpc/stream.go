package visionrpc

import (
	"context"
	"errors"
	"io"
	"iter"
	"sync/atomic"

	"google.golang.org/grpc"

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
//	stream, err := client.Stream(ctx, &visionrpcv1.StreamPredictionsRequest{
//		Sources:       []*visionrpcv1.VideoSource{visionrpc.PathSource("bikes.mp4")},
//		StreamOptions: &visionrpcv1.StreamOptions{MaxFps: proto.Float32(10)},
//	})
//	if err != nil { ... }
//	defer stream.Close()
//	for msg, err := range stream.All() { ... }
func (c *Client) Stream(ctx context.Context, req *visionrpcv1.StreamPredictionsRequest) (*PredictionStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	call, err := c.inference.StreamPredictions(ctx, req)
	if err != nil {
		mapped := fromError(ctx, err) // before cancel, which would make any Canceled look caused by ctx
		cancel()
		return nil, mapped
	}
	return &PredictionStream{ctx: ctx, cancel: cancel, call: call}, nil
}

// PredictionStream is one subscription: frames (GetFrame) and status events (GetStatus) in the order the
// server sends them. Recv and All are for one goroutine; Close may be called from any.
type PredictionStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	call   grpc.ServerStreamingClient[visionrpcv1.StreamPredictionsResponse]

	closed atomic.Bool
}

// Recv returns the next message. It returns io.EOF once the server has ended the stream normally, or after
// Close; any other end is an *Error: the server's status, or codes.Canceled / codes.DeadlineExceeded when the
// stream's context ended it (errors.Is(err, context.Canceled) holds then).
func (s *PredictionStream) Recv() (*visionrpcv1.StreamPredictionsResponse, error) {
	if s.isClosed() {
		return nil, io.EOF
	}
	msg, err := s.call.Recv()
	if err == nil {
		return msg, nil
	}
	if errors.Is(err, io.EOF) || s.isClosed() { // our own Close is a normal end, not an error
		s.cancel() // releases the context's resources
		return nil, io.EOF
	}
	mapped := fromError(s.ctx, err) // before cancel: the context's own error, if any, is the cause
	s.cancel()
	return nil, mapped
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

// Close unsubscribes: the RPC is cancelled and the server frees the subscription at once; Recv returns io.EOF
// from then on. It is idempotent and safe from any goroutine.
func (s *PredictionStream) Close() {
	s.closed.Store(true)
	s.cancel()
}

func (s *PredictionStream) isClosed() bool { return s.closed.Load() }
