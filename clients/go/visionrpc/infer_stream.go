package visionrpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// Frame is one frame sent on an InferStream: its image, the client's own numbering (it must increase from one
// frame to the next of a source), which of the client's cameras it comes from, and its time in that source in
// milliseconds (0: the time the server receives it; dwell times use it).
type Frame struct {
	Image          Image
	SequenceNumber uint64
	SourceIndex    uint32
	TimestampMs    float64
}

// InferStream opens a bidirectional InferStream call: frames the client sends (a camera it owns), one answer per
// frame in the order sent, with the batching, tracking and analytics of a server-side stream. config is the
// call's first message (model, options, analytics, MaxInFlight, Backpressure); nil means the server's defaults.
//
// Back-pressure is explicit. With BACKPRESSURE_WAIT (the default) the server stops reading while MaxInFlight
// frames (default 8) are unanswered, so Send blocks until it reads again: nothing is lost. With
// BACKPRESSURE_DROP a frame arriving while MaxInFlight frames are inferred is answered at once with Dropped.
//
// Send and Recv may run in two goroutines (one each). A frame the server refuses is answered with an error
// (AnswerError) and the call goes on; errors of the call itself (unknown model, bad options) end it and are
// returned by Recv as *Error (Send then returns io.EOF).
//
//	stream, err := client.InferStream(ctx, &visionrpcv1.InferStreamConfig{MaxInFlight: 4})
//	if err != nil { ... }
//	defer stream.Close()
//	go func() {
//		for i, jpeg := range frames {
//			if stream.Send(visionrpc.Frame{Image: visionrpc.ImageFromBytes(jpeg), SequenceNumber: uint64(i)}) != nil {
//				break
//			}
//		}
//		stream.CloseSend()
//	}()
//	for answer, err := range stream.All() { ... }
func (c *Client) InferStream(ctx context.Context, config *visionrpcv1.InferStreamConfig) (*FrameStream, error) {
	ctx, cancel := context.WithCancel(ctx)
	call, err := c.inference.InferStream(ctx)
	if err != nil {
		mapped := fromError(ctx, err)
		cancel()
		return nil, mapped
	}
	if config == nil {
		config = &visionrpcv1.InferStreamConfig{}
	}
	s := &FrameStream{ctx: ctx, cancel: cancel, call: call}
	first := &visionrpcv1.InferStreamRequest{Message: &visionrpcv1.InferStreamRequest_Config{Config: config}}
	if err := call.Send(first); err != nil && !errors.Is(err, io.EOF) {
		cancel()
		return nil, fromError(ctx, err)
	}
	return s, nil
}

type inferStreamCall = grpc.BidiStreamingClient[visionrpcv1.InferStreamRequest, visionrpcv1.InferStreamResponse]

// FrameStream is one InferStream call. Send and CloseSend belong to one goroutine, Recv and All to one
// (possibly another); Close may be called from any.
type FrameStream struct {
	ctx    context.Context
	cancel context.CancelFunc
	call   inferStreamCall

	closeOnce sync.Once
}

// Send sends one frame; it blocks while the server applies back-pressure (BACKPRESSURE_WAIT). An image that
// cannot be read fails before anything is sent. io.EOF means the call has ended: Recv returns why.
func (s *FrameStream) Send(frame Frame) error {
	image, err := frame.Image.Proto()
	if err != nil {
		return fmt.Errorf("visionrpc: frame %d: %w", frame.SequenceNumber, err)
	}
	err = s.call.Send(&visionrpcv1.InferStreamRequest{Message: &visionrpcv1.InferStreamRequest_Frame{
		Frame: &visionrpcv1.InputFrame{
			SequenceNumber: frame.SequenceNumber,
			Image:          image,
			SourceIndex:    frame.SourceIndex,
			TimestampMs:    frame.TimestampMs,
		},
	}})
	if err != nil && !errors.Is(err, io.EOF) {
		return fromError(s.ctx, err)
	}
	return err
}

// CloseSend tells the server no more frames follow; Recv returns the remaining answers, then io.EOF.
func (s *FrameStream) CloseSend() error { return s.call.CloseSend() }

// Recv returns the next answer, in the order the frames were sent: GetPrediction, GetDropped, or an error
// (AnswerError). It returns io.EOF after the last answer once CloseSend was called; any other end is an *Error
// (codes.Canceled when the context or Close ended the call).
func (s *FrameStream) Recv() (*visionrpcv1.InferStreamResponse, error) {
	msg, err := s.call.Recv()
	if err == nil {
		return msg, nil
	}
	if errors.Is(err, io.EOF) {
		s.cancel()
		return nil, io.EOF
	}
	mapped := fromError(s.ctx, err)
	s.cancel()
	return nil, mapped
}

// All yields every answer, then stops at io.EOF; any other error is yielded once, last.
func (s *FrameStream) All() iter.Seq2[*visionrpcv1.InferStreamResponse, error] {
	return func(yield func(*visionrpcv1.InferStreamResponse, error) bool) {
		for {
			msg, err := s.Recv()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(msg, err) || err != nil {
				return
			}
		}
	}
}

// Close cancels the call (the server frees its session at once). Idempotent.
func (s *FrameStream) Close() { s.closeOnce.Do(s.cancel) }

// AnswerError is the *Error of an answer whose frame the server refused (its google.rpc.Status, details
// decoded as for a failed call), or nil for a prediction or a dropped frame.
func AnswerError(answer *visionrpcv1.InferStreamResponse) *Error {
	st := answer.GetError()
	if st == nil {
		return nil
	}
	return decodeStatus(status.FromProto(st))
}
