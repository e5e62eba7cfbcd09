package visionrpc_test

// Tests of the client against an in-process fake server on bufconn: the channel options, deadlines, error
// decoding across the wire, and stream endings, without a real visionrpc server.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

type fakeServer struct {
	visionrpcv1.UnimplementedInferenceServiceServer
	visionrpcv1.UnimplementedModelServiceServer

	deadlines  chan time.Duration // Infer: the remaining time of the call's deadline, -1 when none
	userAgents chan string
	auths      chan string // Infer: the call's authorization metadata
	streamDone chan error  // StreamPredictions: how the server saw the stream end
}

func (f *fakeServer) Infer(ctx context.Context, req *visionrpcv1.InferRequest) (*visionrpcv1.InferResponse, error) {
	remaining := time.Duration(-1)
	if d, ok := ctx.Deadline(); ok {
		remaining = time.Until(d)
	}
	f.deadlines <- remaining
	md, _ := metadata.FromIncomingContext(ctx)
	f.userAgents <- strings.Join(md.Get("user-agent"), ",")
	f.auths <- strings.Join(md.Get("authorization"), ",")
	if len(req.GetImages()) == 0 {
		st, _ := status.New(codes.InvalidArgument, "expected 1 to 64 images, got 0").WithDetails(
			&errdetails.ErrorInfo{Reason: "INVALID_IMAGE_COUNT", Domain: "visionrpc.dev"},
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
				{Field: "images", Description: "expected 1 to 64 images, got 0"},
			}},
		)
		return nil, st.Err()
	}
	if req.GetModelId() == "slow" {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	resp := &visionrpcv1.InferResponse{ModelName: req.GetModelId()}
	for _, im := range req.GetImages() {
		resp.Predictions = append(resp.Predictions, &visionrpcv1.ImagePrediction{
			ImageSize: &visionrpcv1.ImageSize{Width: uint32(len(im.GetEncoded())), Height: im.GetRaw().GetHeight()},
		})
	}
	return resp, nil
}

func (f *fakeServer) StreamPredictions(
	req *visionrpcv1.StreamPredictionsRequest, stream grpc.ServerStreamingServer[visionrpcv1.StreamPredictionsResponse],
) error {
	path := req.GetSources()[0].GetPath()
	if path == "missing.mp4" {
		st, _ := status.New(codes.NotFound, "no such file").WithDetails(
			&errdetails.ErrorInfo{Reason: "SOURCE_NOT_FOUND", Domain: "visionrpc.dev"},
			&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "sources[0].path"}}},
		)
		return st.Err()
	}
	for seq := uint64(0); path != "short.mp4" || seq < 3; seq++ {
		msg := &visionrpcv1.StreamPredictionsResponse{StreamId: "s1", Payload: &visionrpcv1.StreamPredictionsResponse_Frame{
			Frame: &visionrpcv1.FramePrediction{SequenceNumber: seq},
		}}
		if err := stream.Send(msg); err != nil {
			f.streamDone <- err
			return err
		}
		select {
		case <-stream.Context().Done():
			f.streamDone <- stream.Context().Err()
			return stream.Context().Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	f.streamDone <- nil
	return nil
}

func (f *fakeServer) GetModel(_ context.Context, req *visionrpcv1.GetModelRequest) (*visionrpcv1.GetModelResponse, error) {
	if req.GetModelId() == "busy" {
		st, _ := status.New(codes.ResourceExhausted, "queue full").WithDetails(
			&errdetails.ErrorInfo{Reason: "QUEUE_FULL", Domain: "visionrpc.dev"},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(250 * time.Millisecond)},
		)
		return nil, st.Err()
	}
	return &visionrpcv1.GetModelResponse{Model: &visionrpcv1.Model{Name: req.GetModelId()}}, nil
}

// startFake serves the fake on an in-memory listener and dials it with opts.
func startFake(t *testing.T, opts ...visionrpc.Option) (*visionrpc.Client, *fakeServer) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64 << 20))
	fake := &fakeServer{
		deadlines:  make(chan time.Duration, 10),
		userAgents: make(chan string, 10),
		auths:      make(chan string, 10),
		streamDone: make(chan error, 10),
	}
	visionrpcv1.RegisterInferenceServiceServer(srv, fake)
	visionrpcv1.RegisterModelServiceServer(srv, fake)
	healthSrv := health.NewServer()
	healthSrv.SetServingStatus(visionrpc.InferenceServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, healthSrv)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	dialer := grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) })
	opts = append([]visionrpc.Option{visionrpc.WithDialOptions(dialer)}, opts...)
	client, err := visionrpc.Dial(context.Background(), "passthrough:///bufnet", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client, fake
}

func TestDialRefusesBadOptions(t *testing.T) {
	for name, opt := range map[string]visionrpc.Option{
		"negative timeout":     visionrpc.WithTimeout(-time.Second),
		"zero message size":    visionrpc.WithMaxMessageBytes(0),
		"keepalive below 10 s": visionrpc.WithKeepalive(time.Second),
		"nil transport creds":  visionrpc.WithTransportCredentials(nil),
	} {
		if _, err := visionrpc.Dial(context.Background(), "127.0.0.1:1", opt); err == nil {
			t.Errorf("%s: Dial accepted it", name)
		}
	}
	for name, opt := range map[string]visionrpc.Option{
		"no timeout":   visionrpc.WithTimeout(0),
		"no keepalive": visionrpc.WithKeepalive(0),
		"keepalive":    visionrpc.WithKeepalive(visionrpc.MinKeepaliveTime),
		"tls":          visionrpc.WithTLS(nil),
	} {
		client, err := visionrpc.Dial(context.Background(), "127.0.0.1:1", opt)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if err := client.Close(); err != nil {
			t.Errorf("%s: Close: %v", name, err)
		}
		if err := client.Close(); err != nil {
			t.Errorf("%s: second Close: %v", name, err)
		}
	}
}

func TestDialWithBlockFailsFastOnUnreachableServer(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	address := lis.Addr().String()
	_ = lis.Close() // nothing listens there any more
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err = visionrpc.Dial(ctx, address, visionrpc.WithBlock())
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.Unavailable {
		t.Fatalf("Dial(WithBlock) to a closed port: %v, want an Unavailable *Error", err)
	}
}

func TestUnaryDeadlines(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		opts    []visionrpc.Option
		ctx     func() (context.Context, context.CancelFunc)
		min     time.Duration
		max     time.Duration
		noLimit bool
	}{
		{name: "client default", min: 29 * time.Second, max: visionrpc.DefaultTimeout},
		{name: "WithTimeout", opts: []visionrpc.Option{visionrpc.WithTimeout(5 * time.Second)}, min: 4 * time.Second, max: 5 * time.Second},
		{name: "WithTimeout(0)", opts: []visionrpc.Option{visionrpc.WithTimeout(0)}, noLimit: true},
		{
			name: "context deadline wins over the default",
			ctx:  func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Minute) },
			min:  119 * time.Second, max: 2 * time.Minute,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, fake := startFake(t, tc.opts...)
			callCtx, cancel := ctx, context.CancelFunc(func() {})
			if tc.ctx != nil {
				callCtx, cancel = tc.ctx()
			}
			defer cancel()
			if _, err := client.Infer(callCtx, []visionrpc.Image{visionrpc.ImageFromBytes([]byte("x"))}); err != nil {
				t.Fatal(err)
			}
			got := <-fake.deadlines
			if tc.noLimit {
				if got != -1 {
					t.Errorf("the server saw a deadline in %v, want none", got)
				}
				return
			}
			if got < tc.min || got > tc.max {
				t.Errorf("the server saw a deadline in %v, want within [%v, %v]", got, tc.min, tc.max)
			}
			if ua := <-fake.userAgents; !strings.HasPrefix(ua, "visionrpc-go") {
				t.Errorf("user agent %q, want visionrpc-go first", ua)
			}
		})
	}
}

func TestUnaryDeadlineExceeded(t *testing.T) {
	client, _ := startFake(t, visionrpc.WithTimeout(50*time.Millisecond))
	_, err := client.Infer(context.Background(), []visionrpc.Image{visionrpc.ImageFromBytes([]byte("x"))}, visionrpc.WithModel("slow"))
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.DeadlineExceeded {
		t.Fatalf("got %v, want a DeadlineExceeded *Error", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(%v, context.DeadlineExceeded) = false", err)
	}
}

func TestRichErrorsAcrossTheWire(t *testing.T) {
	client, _ := startFake(t)
	_, err := client.Infer(context.Background(), nil)
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) {
		t.Fatalf("Infer with no images: %v, want an *Error", err)
	}
	if rpcErr.Code != codes.InvalidArgument || rpcErr.Reason != "INVALID_IMAGE_COUNT" || rpcErr.Domain != "visionrpc.dev" ||
		len(rpcErr.FieldViolations) != 1 || rpcErr.FieldViolations[0].Field != "images" {
		t.Errorf("decoded %#v", rpcErr)
	}

	_, err = client.GetModel(context.Background(), "busy")
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.ResourceExhausted || rpcErr.RetryDelay != 250*time.Millisecond {
		t.Errorf("GetModel(busy): %#v, want ResourceExhausted with a 250ms RetryDelay", err)
	}
	if model, err := client.GetModel(context.Background(), "yolo"); err != nil || model.GetName() != "yolo" {
		t.Errorf("GetModel(yolo) = %v, %v", model, err)
	}

	_, err = client.ListModels(context.Background())
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.Unimplemented {
		t.Errorf("ListModels on the fake: %v, want Unimplemented", err)
	}
}

func TestHealth(t *testing.T) {
	client, _ := startFake(t)
	ctx := context.Background()
	if s, err := client.Health(ctx, ""); err != nil || s != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("Health(\"\") = %v, %v; want SERVING", s, err)
	}
	if s, err := client.Health(ctx, visionrpc.InferenceServiceName); err != nil || s != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("Health(inference) = %v, %v; want NOT_SERVING", s, err)
	}
	_, err := client.Health(ctx, "no.such.Service")
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.NotFound {
		t.Errorf("Health(unknown) = %v, want a NotFound *Error", err)
	}
}

func TestMaxMessageBytes(t *testing.T) {
	big := visionrpc.ImageFromBytes(bytes.Repeat([]byte{1}, 17<<20))
	client, _ := startFake(t)
	_, err := client.Infer(context.Background(), []visionrpc.Image{big})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("a 17 MiB request with the 16 MiB default: %v, want ResourceExhausted", err)
	}
	client, _ = startFake(t, visionrpc.WithMaxMessageBytes(32<<20))
	resp, err := client.Infer(context.Background(), []visionrpc.Image{big})
	if err != nil || resp.GetPredictions()[0].GetImageSize().GetWidth() != 17<<20 {
		t.Errorf("a 17 MiB request with a 32 MiB limit: %v", err)
	}
}

func TestNewInferRequest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "photo.png")
	if err := os.WriteFile(path, []byte("file bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	req, err := visionrpc.NewInferRequest(
		[]visionrpc.Image{
			visionrpc.ImageFromBytes([]byte("encoded")),
			visionrpc.ImageFromFile(path),
			visionrpc.ImageFromPixels([]byte{1, 2, 3}, 1, 1, visionrpcv1.ChannelOrder_CHANNEL_ORDER_RGB),
		},
		visionrpc.WithModel("centerface/1"),
		visionrpc.WithConfidence(0.25),
		visionrpc.WithIoU(0.5),
		visionrpc.WithMaxDetections(10),
		visionrpc.WithClassNames("cup"),
		visionrpc.WithClassNames("person"),
		visionrpc.WithClassIDs(3),
		visionrpc.WithTopK(5),
	)
	if err != nil {
		t.Fatal(err)
	}
	want := &visionrpcv1.InferRequest{
		ModelId: "centerface/1",
		Images: []*visionrpcv1.Image{
			{Source: &visionrpcv1.Image_Encoded{Encoded: []byte("encoded")}},
			{Source: &visionrpcv1.Image_Encoded{Encoded: []byte("file bytes")}},
			{Source: &visionrpcv1.Image_Raw{Raw: &visionrpcv1.RawImage{
				Data: []byte{1, 2, 3}, Width: 1, Height: 1, ChannelOrder: visionrpcv1.ChannelOrder_CHANNEL_ORDER_RGB,
			}}},
		},
		Options: &visionrpcv1.InferOptions{
			ConfidenceThreshold: proto.Float32(0.25),
			IouThreshold:        proto.Float32(0.5),
			MaxDetections:       proto.Uint32(10),
			ClassNames:          []string{"cup", "person"},
			ClassIds:            []uint32{3},
			TopK:                proto.Uint32(5),
		},
	}
	if !proto.Equal(req, want) {
		t.Errorf("request\n%v\nwant\n%v", req, want)
	}

	// Empty bytes are sent as they are: the server is the one judge of image content.
	if req, err := visionrpc.NewInferRequest([]visionrpc.Image{visionrpc.ImageFromBytes(nil)}); err != nil || len(req.GetImages()) != 1 {
		t.Errorf("nil bytes: %v, %v; want one empty encoded image", req, err)
	}
	if _, err := visionrpc.NewInferRequest([]visionrpc.Image{{}}); err == nil {
		t.Error("the zero Image: want an error")
	}
	_, err = visionrpc.NewInferRequest([]visionrpc.Image{visionrpc.ImageFromBytes([]byte("x")), visionrpc.ImageFromFile(path + ".missing")})
	if !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "images[1]") {
		t.Errorf("missing file: %v, want os.ErrNotExist naming images[1]", err)
	}
	if req, err := visionrpc.NewInferRequest(nil); err != nil || req.GetOptions() != nil || len(req.GetImages()) != 0 {
		t.Errorf("no images, no options: %v, %v", req, err)
	}
}

func streamRequest(path string) *visionrpcv1.StreamPredictionsRequest {
	return &visionrpcv1.StreamPredictionsRequest{Sources: []*visionrpcv1.VideoSource{visionrpc.PathSource(path)}}
}

func TestStreamEndsWithEOF(t *testing.T) {
	client, fake := startFake(t)
	stream, err := client.Stream(context.Background(), streamRequest("short.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	defer stream.Close()
	var seqs []uint64
	for msg, err := range stream.All() {
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, msg.GetFrame().GetSequenceNumber())
	}
	if len(seqs) != 3 || seqs[2] != 2 {
		t.Errorf("sequence numbers %v, want [0 1 2]", seqs)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("Recv after the end: %v, want io.EOF", err)
	}
	if err := <-fake.streamDone; err != nil {
		t.Errorf("server side: %v", err)
	}
}

func TestStreamCloseIsACleanEnd(t *testing.T) {
	client, fake := startFake(t)
	stream, err := client.Stream(context.Background(), streamRequest("bikes.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := stream.Recv(); err != nil {
			t.Fatal(err)
		}
	}
	stream.Close()
	stream.Close() // idempotent
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("Recv after Close: %v, want io.EOF", err)
	}
	select {
	case err := <-fake.streamDone:
		if status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
			t.Errorf("the server saw %v, want a cancellation", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the server did not see the cancellation")
	}
}

func TestStreamBreakClosesIt(t *testing.T) {
	client, fake := startFake(t)
	stream, err := client.Stream(context.Background(), streamRequest("bikes.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range stream.All() {
		if err != nil {
			t.Fatal(err)
		}
		break
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Errorf("Recv after breaking out of All: %v, want io.EOF", err)
	}
	select {
	case <-fake.streamDone:
	case <-time.After(5 * time.Second):
		t.Error("the server did not see the cancellation")
	}
}

func TestStreamContextCancelIsCanceled(t *testing.T) {
	client, _ := startFake(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.Stream(ctx, streamRequest("bikes.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	cancel()
	for {
		_, err = stream.Recv()
		if err != nil {
			break
		}
	}
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.Canceled || !errors.Is(err, context.Canceled) {
		t.Errorf("Recv after cancelling the context: %#v, want a Canceled *Error wrapping context.Canceled", err)
	}
}

func TestStreamErrorSurfacesFromRecv(t *testing.T) {
	client, _ := startFake(t)
	stream, err := client.Stream(context.Background(), streamRequest("missing.mp4"))
	if err != nil {
		t.Fatal(err)
	}
	var got []error
	for _, err := range stream.All() {
		got = append(got, err)
	}
	var rpcErr *visionrpc.Error
	if len(got) != 1 || !errors.As(got[0], &rpcErr) || rpcErr.Code != codes.NotFound || rpcErr.Reason != "SOURCE_NOT_FOUND" ||
		rpcErr.FieldViolations[0].Field != "sources[0].path" {
		t.Errorf("yielded %v, want one NotFound *Error", got)
	}
	if errors.Is(got[0], context.Canceled) {
		t.Error("a server error must not look like a cancellation")
	}
}

func TestAPIKeyTravelsAsBearerToken(t *testing.T) {
	cases := []struct {
		name string
		opts []visionrpc.Option
		want string
	}{
		{"no key", nil, ""},
		{"key", []visionrpc.Option{visionrpc.WithAPIKey(" k-123 ")}, "Bearer k-123"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, fake := startFake(t, tc.opts...)
			if _, err := client.Infer(context.Background(), []visionrpc.Image{visionrpc.ImageFromBytes([]byte("x"))}); err != nil {
				t.Fatal(err)
			}
			<-fake.deadlines
			<-fake.userAgents
			if got := <-fake.auths; got != tc.want {
				t.Fatalf("authorization %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAccessOptionsRefuseMistakes(t *testing.T) {
	cases := []struct {
		name string
		opt  visionrpc.Option
	}{
		{"empty key", visionrpc.WithAPIKey("  ")},
		{"missing CA file", visionrpc.WithTLSFiles("/nonexistent/ca.pem", "", "")},
		{"certificate without key", visionrpc.WithTLSFiles("", "/nonexistent/c.pem", "")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := visionrpc.Dial(context.Background(), "127.0.0.1:1", tc.opt); err == nil {
				t.Fatal("expected an error")
			}
		})
	}
}
