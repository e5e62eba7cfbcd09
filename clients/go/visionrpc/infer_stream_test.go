package visionrpc_test

// InferStream through this client against the real server the conformance harness starts: answers in order
// and equal to Infer's, refused frames answered with their error while the call goes on, back-pressure
// (WAIT loses nothing; DROP answers frames past the bound as dropped), call errors, and Close.

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

func mediaFile(t *testing.T, name string) []byte {
	t.Helper()
	media := os.Getenv("VISIONRPC_CONFORMANCE_MEDIA")
	if media == "" {
		t.Fatal("VISIONRPC_CONFORMANCE_MEDIA is not set: run scripts/test-go (the harness sets it)")
	}
	data, err := os.ReadFile(filepath.Join(media, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// pushAll sends the frames from another goroutine (as fast as the call lets it), then collects every answer.
func pushAll(
	ctx context.Context, t *testing.T, client *visionrpc.Client, config *visionrpcv1.InferStreamConfig, frames []visionrpc.Frame,
) ([]*visionrpcv1.InferStreamResponse, error) {
	t.Helper()
	stream, err := client.InferStream(ctx, config)
	if err != nil {
		return nil, err
	}
	defer stream.Close()
	sent := make(chan error, 1)
	go func() {
		for _, frame := range frames {
			if err := stream.Send(frame); err != nil {
				sent <- err
				return
			}
		}
		sent <- stream.CloseSend()
	}()
	var answers []*visionrpcv1.InferStreamResponse
	for answer, err := range stream.All() {
		if err != nil {
			return answers, err
		}
		answers = append(answers, answer)
	}
	if err := <-sent; err != nil {
		t.Errorf("send: %v", err)
	}
	return answers, nil
}

func numbered(images ...[]byte) []visionrpc.Frame {
	frames := make([]visionrpc.Frame, len(images))
	for i, data := range images {
		frames[i] = visionrpc.Frame{Image: visionrpc.ImageFromBytes(data), SequenceNumber: uint64(i)}
	}
	return frames
}

func sequenceNumbers(answers []*visionrpcv1.InferStreamResponse) []uint64 {
	out := make([]uint64, len(answers))
	for i, a := range answers {
		out[i] = a.GetSequenceNumber()
	}
	return out
}

func TestInferStreamAnswersInOrderLikeInfer(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	coffee, motorbike := mediaFile(t, "coffee.png"), mediaFile(t, "motorcycle_left.png")
	images := [][]byte{coffee, motorbike, coffee, motorbike, coffee, motorbike}
	answers, err := pushAll(ctx, t, client, &visionrpcv1.InferStreamConfig{MaxInFlight: 2}, numbered(images...))
	if err != nil {
		t.Fatal(err)
	}
	if got := sequenceNumbers(answers); !slices.Equal(got, []uint64{0, 1, 2, 3, 4, 5}) {
		t.Fatalf("sequence numbers %v, want 0..5", got)
	}
	for i, answer := range answers {
		unary, err := client.Infer(ctx, []visionrpc.Image{visionrpc.ImageFromBytes(images[i])})
		if err != nil {
			t.Fatal(err)
		}
		want, got := unary.GetPredictions()[0].GetDetections(), answer.GetPrediction().GetDetections()
		if len(got) != len(want) {
			t.Fatalf("answer %d: %d detections, Infer gave %d", i, len(got), len(want))
		}
		for j := range got {
			if got[j].GetClassName() != want[j].GetClassName() || abs32(got[j].GetBox().GetXMin()-want[j].GetBox().GetXMin()) > 1 {
				t.Errorf("answer %d detection %d: %v, Infer gave %v", i, j, got[j], want[j])
			}
		}
	}
}

func abs32(v float32) float32 {
	if v < 0 {
		return -v
	}
	return v
}

func TestInferStreamRefusedFrameGetsItsErrorAndTheCallGoesOn(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	coffee := mediaFile(t, "coffee.png")
	answers, err := pushAll(ctx, t, client, nil, numbered(coffee, []byte("not an image"), coffee))
	if err != nil {
		t.Fatal(err)
	}
	if len(answers) != 3 || answers[0].GetPrediction() == nil || answers[2].GetPrediction() == nil {
		t.Fatalf("answers %v, want a prediction, an error, a prediction", answers)
	}
	refused := visionrpc.AnswerError(answers[1])
	if refused == nil || refused.Code != codes.InvalidArgument || refused.Reason != "UNSUPPORTED_IMAGE_FORMAT" {
		t.Fatalf("answer 1: %v, want InvalidArgument UNSUPPORTED_IMAGE_FORMAT", refused)
	}
	if visionrpc.AnswerError(answers[0]) != nil {
		t.Errorf("a prediction has no error")
	}
}

func TestInferStreamBackPressure(t *testing.T) {
	client := dialServer(t)
	coffee := mediaFile(t, "coffee.png")
	images := make([][]byte, 24)
	for i := range images {
		images[i] = coffee
	}
	cases := []struct {
		name         string
		backpressure visionrpcv1.Backpressure
		wantDropped  bool
	}{
		{"wait loses nothing", visionrpcv1.Backpressure_BACKPRESSURE_WAIT, false},
		{"drop answers frames past the bound dropped", visionrpcv1.Backpressure_BACKPRESSURE_DROP, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			defer cancel()
			config := &visionrpcv1.InferStreamConfig{MaxInFlight: 1, Backpressure: tc.backpressure}
			answers, err := pushAll(ctx, t, client, config, numbered(images...))
			if err != nil {
				t.Fatal(err)
			}
			want := make([]uint64, len(images))
			for i := range want {
				want[i] = uint64(i)
			}
			if got := sequenceNumbers(answers); !slices.Equal(got, want) {
				t.Fatalf("sequence numbers %v, want each frame once in order", got)
			}
			dropped := 0
			for _, a := range answers {
				if a.GetDropped() {
					dropped++
				} else if a.GetPrediction() == nil {
					t.Errorf("answer %d: %v, want a prediction or dropped", a.GetSequenceNumber(), a)
				}
			}
			// A client sending 24 frames at once outpaces one frame in flight (~40 ms of inference each).
			if (dropped > 0) != tc.wantDropped || dropped == len(images) {
				t.Errorf("%d of %d dropped", dropped, len(images))
			}
		})
	}
}

func TestInferStreamCallErrors(t *testing.T) {
	client := dialServer(t)
	coffee := mediaFile(t, "coffee.png")
	cases := []struct {
		name   string
		config *visionrpcv1.InferStreamConfig
		code   codes.Code
		reason string
	}{
		{"unknown model", &visionrpcv1.InferStreamConfig{ModelId: "no-such-model"}, codes.NotFound, "MODEL_NOT_FOUND"},
		{"bad option", &visionrpcv1.InferStreamConfig{Options: &visionrpcv1.InferOptions{ClassNames: []string{"unicorn"}}},
			codes.InvalidArgument, "UNKNOWN_CLASS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			defer cancel()
			_, err := pushAll(ctx, t, client, tc.config, numbered(coffee))
			var rpcErr *visionrpc.Error
			if !errors.As(err, &rpcErr) || rpcErr.Code != tc.code || rpcErr.Reason != tc.reason {
				t.Fatalf("got %v, want %v %s", err, tc.code, tc.reason)
			}
		})
	}
}

func TestInferStreamClose(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
	defer cancel()
	stream, err := client.InferStream(ctx, &visionrpcv1.InferStreamConfig{MaxInFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	coffee := visionrpc.ImageFromBytes(mediaFile(t, "coffee.png"))
	go func() { // an endless camera: it stops when the call ends
		for i := uint64(0); stream.Send(visionrpc.Frame{Image: coffee, SequenceNumber: i}) == nil; i++ {
		}
	}()
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	stream.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := stream.Recv()
		if err == nil && time.Now().Before(deadline) {
			continue // answers already on their way
		}
		var rpcErr *visionrpc.Error
		if !errors.As(err, &rpcErr) || rpcErr.Code != codes.Canceled || errors.Is(err, io.EOF) {
			t.Fatalf("after Close: %v, want Canceled", err)
		}
		return
	}
}
