package visionrpc

import (
	"context"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// InferenceServiceName is the health-checking name of the inference service: it turns SERVING only once the
// server's default model is warm (readiness). "" is the whole server (liveness).
const InferenceServiceName = "visionrpc.v1.InferenceService"

// Client is a connection to one visionrpc server (or a load balancer in front of several, or an "ipv4:" list of
// them). It is safe for concurrent use; the channel reconnects on its own. Close it when done.
type Client struct {
	conn      *grpc.ClientConn
	inference visionrpcv1.InferenceServiceClient
	models    visionrpcv1.ModelServiceClient
	health    healthpb.HealthClient
	timeout   time.Duration

	streamResumeAttempts int

	closeOnce sync.Once
	closeErr  error
}

// Dial creates a client for address: "host:port" or any gRPC target ("dns:///svc:50051",
// "unix:///run/visionrpc.sock"), including gRPC's static address lists, "ipv4:10.0.0.1:50051,10.0.0.2:50051"
// and "ipv6:[::1]:50051,[::1]:50052": one server serves until its connection goes away (pick_first), so a
// stream resumed after a server drains lands on the next one that answers. The defaults are a plaintext channel, DefaultTimeout per unary call,
// DefaultMaxMessageBytes both ways and keepalive pings every DefaultKeepaliveTime during calls.
//
// Dial does not wait for the connection unless WithBlock is given: then ctx bounds the wait, and a server that
// cannot be reached fails Dial with an *Error (Unavailable, or the context's code).
func Dial(ctx context.Context, address string, opts ...Option) (*Client, error) {
	cfg := defaultConfig()
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	if _, err := listTarget(address); err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(address, cfg.grpcDialOptions()...)
	if err != nil {
		return nil, fmt.Errorf("visionrpc: dial %q: %w", address, err)
	}
	c := &Client{
		conn:      conn,
		inference: visionrpcv1.NewInferenceServiceClient(conn),
		models:    visionrpcv1.NewModelServiceClient(conn),
		health:    healthpb.NewHealthClient(conn),
		timeout:   cfg.timeout,

		streamResumeAttempts: cfg.streamResumeAttempts,
	}
	if cfg.block {
		if err := waitReady(ctx, conn); err != nil {
			_ = conn.Close()
			return nil, err
		}
	}
	return c, nil
}

// waitReady connects and waits for READY; a TRANSIENT_FAILURE (the first attempt failed) ends the wait too,
// as waiting through reconnect backoff would only hide the reason from the caller.
func waitReady(ctx context.Context, conn *grpc.ClientConn) error {
	conn.Connect()
	for {
		state := conn.GetState()
		switch state {
		case connectivity.Ready:
			return nil
		case connectivity.TransientFailure, connectivity.Shutdown:
			return &Error{Code: codes.Unavailable, Message: fmt.Sprintf("connection to %s: %s", conn.Target(), state)}
		}
		if !conn.WaitForStateChange(ctx, state) {
			return fromError(ctx, ctx.Err())
		}
	}
}

// Close closes the channel, cancelling the calls in flight. It is idempotent.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.conn.Close() })
	return c.closeErr
}

// Conn is the underlying channel, for other services on the same connection (e.g. server reflection).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// InferenceService is the generated stub, for what the wrapper does not cover; convert its errors with
// FromError.
func (c *Client) InferenceService() visionrpcv1.InferenceServiceClient { return c.inference }

// ModelService is the generated stub of the model service; convert its errors with FromError.
func (c *Client) ModelService() visionrpcv1.ModelServiceClient { return c.models }

// ListModels returns every model of the server's repository, built-ins included.
func (c *Client) ListModels(ctx context.Context) ([]*visionrpcv1.Model, error) {
	resp, err := unary(ctx, c, c.models.ListModels, &visionrpcv1.ListModelsRequest{})
	return resp.GetModels(), err
}

// GetModel returns one model by "name" (newest version) or "name/version"; an unknown one is an *Error with
// codes.NotFound.
func (c *Client) GetModel(ctx context.Context, modelID string) (*visionrpcv1.Model, error) {
	resp, err := unary(ctx, c, c.models.GetModel, &visionrpcv1.GetModelRequest{ModelId: modelID})
	return resp.GetModel(), err
}

// LoadModel loads and warms a model now rather than on its first request; it is idempotent. A first load of a
// built-in may download and convert it: give ctx a generous deadline (it wins over the client's timeout).
func (c *Client) LoadModel(ctx context.Context, modelID string) (*visionrpcv1.Model, error) {
	resp, err := unary(ctx, c, c.models.LoadModel, &visionrpcv1.LoadModelRequest{ModelId: modelID})
	return resp.GetModel(), err
}

// UnloadModel releases a loaded model (it loads again on demand); it is idempotent.
func (c *Client) UnloadModel(ctx context.Context, modelID string) (*visionrpcv1.Model, error) {
	resp, err := unary(ctx, c, c.models.UnloadModel, &visionrpcv1.UnloadModelRequest{ModelId: modelID})
	return resp.GetModel(), err
}

// Health returns the grpc.health.v1 status of service: "" for the whole server (liveness), or
// InferenceServiceName, SERVING only once the default model is warm (readiness). A service the server does not
// know is an *Error with codes.NotFound.
func (c *Client) Health(ctx context.Context, service string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	resp, err := unary(ctx, c, c.health.Check, &healthpb.HealthCheckRequest{Service: service})
	return resp.GetStatus(), err
}

// unary is the one path of every unary call: one deadline rule, one error mapping.
func unary[Req, Resp any](
	ctx context.Context, c *Client,
	method func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req,
) (Resp, error) {
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	resp, err := method(ctx, req)
	if err != nil {
		var zero Resp
		return zero, fromError(ctx, err)
	}
	return resp, nil
}
