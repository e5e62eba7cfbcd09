// Command streamprobe subscribes to a stream and prints every message as one JSON object per line, so a test
// can drive the Python, Go, Node and C# clients with the same command line and compare what they saw, resumes
// included.
//
//	go run ./examples/streamprobe --addresses 127.0.0.1:50051[,127.0.0.1:50052] (--path P | --url U)
//		[--max-fps F] [--every-frame] [--duration-s S]
//
// Several addresses make an "ipv4:" target, so a stream resumed after one server drains lands on another. Lines:
//
//	{"kind":"frame","stream_id":"...","cursor":N,"source_index":I,"sequence_number":N}
//	{"kind":"status","event":"STARTED","stream_id":"...","cursor":N}
//	{"kind":"status","event":"RESUMED","stream_id":"...","cursor":0,"outcome":"REPLAYED","previous_stream_id":"...","messages_lost":0,"downtime_ms":61.2}
//	{"kind":"end"}                                                      (exit 0: the stream ended, or --duration-s passed)
//	{"kind":"error","code":"UNAVAILABLE","reason":"SHUTTING_DOWN","message":"..."}   (exit 1)
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

// line is one output line; the pointers are set only for the kinds (and events) that carry them.
type line struct {
	Kind             string   `json:"kind"`
	Event            string   `json:"event,omitempty"`
	StreamID         *string  `json:"stream_id,omitempty"`
	Cursor           *uint64  `json:"cursor,omitempty"`
	SourceIndex      *uint32  `json:"source_index,omitempty"`
	SequenceNumber   *uint64  `json:"sequence_number,omitempty"`
	Outcome          string   `json:"outcome,omitempty"`
	PreviousStreamID *string  `json:"previous_stream_id,omitempty"`
	MessagesLost     *uint64  `json:"messages_lost,omitempty"`
	DowntimeMs       *float64 `json:"downtime_ms,omitempty"`
	Code             string   `json:"code,omitempty"`
	Reason           *string  `json:"reason,omitempty"`
	Message          *string  `json:"message,omitempty"`
}

// out writes each line with one write to the unbuffered stdout: a reader sees it at once.
var out = json.NewEncoder(os.Stdout)

func main() {
	addresses := flag.String("addresses", "", "HOST:PORT[,HOST:PORT...] of the servers (several: IPv4 addresses)")
	path := flag.String("path", "", "video file below the server's media root")
	url := flag.String("url", "", "http(s) or rtsp URL of the video")
	maxFPS := flag.Float64("max-fps", 0, "cap on frames per second per source (0: none)")
	everyFrame := flag.Bool("every-frame", false, "deliver every frame (DELIVERY_EVERY_FRAME) instead of a lossy queue")
	durationS := flag.Float64("duration-s", 0, "end the subscription after this many seconds (0: at the stream's end)")
	flag.Parse()
	if *addresses == "" || (*path == "") == (*url == "") || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: streamprobe --addresses HOST:PORT[,HOST:PORT...] (--path P | --url U) [--max-fps F] [--every-frame] [--duration-s S]")
		os.Exit(2)
	}

	req := &visionrpcv1.StreamPredictionsRequest{StreamOptions: &visionrpcv1.StreamOptions{}}
	if *path != "" {
		req.Sources = []*visionrpcv1.VideoSource{visionrpc.PathSource(*path)}
	} else {
		req.Sources = []*visionrpcv1.VideoSource{visionrpc.URLSource(*url)}
	}
	if *maxFPS > 0 {
		fps := float32(*maxFPS)
		req.StreamOptions.MaxFps = &fps
	}
	if *everyFrame {
		req.StreamOptions.Delivery = visionrpcv1.Delivery_DELIVERY_EVERY_FRAME
	}
	if err := run(target(*addresses), req, time.Duration(*durationS*float64(time.Second))); err != nil {
		printError(err)
		os.Exit(1)
	}
	_ = out.Encode(line{Kind: "end"})
}

// target is the gRPC target of the address list: one address as it is, several as gRPC's "ipv4:" list.
func target(addresses string) string {
	if strings.Contains(addresses, ",") {
		return "ipv4:" + addresses
	}
	return addresses
}

func run(target string, req *visionrpcv1.StreamPredictionsRequest, duration time.Duration) error {
	client, err := visionrpc.Dial(context.Background(), target)
	if err != nil {
		return err
	}
	defer client.Close()
	stream, err := client.Stream(context.Background(), req)
	if err != nil {
		return err
	}
	defer stream.Close()
	if duration > 0 {
		time.AfterFunc(duration, stream.Close) // a clean end: Recv returns io.EOF and All stops
	}
	for msg, err := range stream.All() {
		if err != nil {
			return err
		}
		if err := out.Encode(messageLine(msg, stream)); err != nil {
			return err
		}
	}
	return nil
}

func messageLine(msg *visionrpcv1.StreamPredictionsResponse, stream *visionrpc.PredictionStream) line {
	l := line{StreamID: ptr(msg.GetStreamId()), Cursor: ptr(msg.GetCursor())}
	if frame := msg.GetFrame(); frame != nil {
		l.Kind = "frame"
		l.SourceIndex, l.SequenceNumber = ptr(frame.GetSourceIndex()), ptr(frame.GetSequenceNumber())
		return l
	}
	status := msg.GetStatus()
	l.Kind = "status"
	l.Event = strings.TrimPrefix(status.GetEvent().String(), "STREAM_EVENT_")
	if status.GetEvent() == visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED {
		// Recv recorded this resume before returning its status, so LastGap is this one's.
		gap := stream.LastGap()
		l.Outcome = strings.TrimPrefix(gap.Outcome.String(), "RESUME_OUTCOME_")
		l.PreviousStreamID = ptr(gap.PreviousStreamID)
		l.MessagesLost = ptr(gap.MessagesLost)
		l.DowntimeMs = ptr(float64(gap.Downtime.Microseconds()) / 1000)
	}
	return l
}

func printError(err error) {
	l := line{Kind: "error", Code: "UNKNOWN", Reason: ptr(""), Message: ptr(err.Error())}
	var rpcErr *visionrpc.Error
	if errors.As(err, &rpcErr) {
		l.Code, l.Reason, l.Message = codeName(rpcErr.Code), ptr(rpcErr.Reason), ptr(rpcErr.Message)
	}
	_ = out.Encode(l)
}

// codeName is the canonical name of a status code, as the other languages print it ("CANCELLED", where
// codes.Canceled.String() is "Canceled").
func codeName(code codes.Code) string {
	names := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN", codes.InvalidArgument: "INVALID_ARGUMENT",
		codes.DeadlineExceeded: "DEADLINE_EXCEEDED", codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED", codes.OutOfRange: "OUT_OF_RANGE",
		codes.Unimplemented: "UNIMPLEMENTED", codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE",
		codes.DataLoss: "DATA_LOSS", codes.Unauthenticated: "UNAUTHENTICATED",
	}
	if name, ok := names[code]; ok {
		return name
	}
	return fmt.Sprintf("CODE_%d", code)
}

func ptr[T any](v T) *T { return &v }
