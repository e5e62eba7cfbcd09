package visionrpc

import (
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

const (
	// DefaultAddress is where `visionrpc serve` listens by default.
	DefaultAddress = "127.0.0.1:50051"
	// DefaultTimeout is the deadline of each unary call whose context has none (WithTimeout changes it).
	DefaultTimeout = 30 * time.Second
	// DefaultMaxMessageBytes limits requests and responses, both ways; it equals the server's default
	// --max-message-bytes (gRPC's own defaults are 4 MiB received and unlimited sent).
	DefaultMaxMessageBytes = 16 << 20
	// DefaultKeepaliveTime is the interval of HTTP/2 keepalive pings while a call is in flight.
	DefaultKeepaliveTime = 30 * time.Second
	// KeepaliveTimeout is how long a keepalive ping may go unanswered before the connection is considered dead.
	KeepaliveTimeout = 10 * time.Second
	// MinKeepaliveTime is the shortest keepalive interval: grpc-go raises shorter ones to it, and the visionrpc
	// server accepts pings at most every 10 s (more often is answered with GOAWAY "too_many_pings").
	MinKeepaliveTime = 10 * time.Second
)

// Option configures Dial.
type Option func(*config) error

type config struct {
	creds           credentials.TransportCredentials
	timeout         time.Duration
	maxMessageBytes int
	keepaliveTime   time.Duration
	block           bool
	userAgent       string
	dialOptions     []grpc.DialOption
	apiKey          string
	// streamResumeAttempts caps the calls a broken stream re-issues without a message; 0 turns resume off.
	streamResumeAttempts int
}

func defaultConfig() config {
	return config{
		creds:           insecure.NewCredentials(),
		timeout:         DefaultTimeout,
		maxMessageBytes: DefaultMaxMessageBytes,
		keepaliveTime:   DefaultKeepaliveTime,
		userAgent:       "visionrpc-go",

		streamResumeAttempts: DefaultStreamResumeAttempts,
	}
}

// WithTLS makes the channel use TLS with the given configuration (nil: the system roots and the address's host
// name). Without it or WithTransportCredentials the channel is plaintext, as on loopback or inside a service
// mesh that does mTLS on the client's behalf.
func WithTLS(cfg *tls.Config) Option {
	return func(c *config) error {
		c.creds = credentials.NewTLS(cfg)
		return nil
	}
}

// WithTransportCredentials sets the channel's transport credentials (e.g. credentials.NewClientTLSFromFile,
// or an ALTS or xDS implementation).
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *config) error {
		if creds == nil {
			return fmt.Errorf("visionrpc: expected transport credentials, got nil")
		}
		c.creds = creds
		return nil
	}
}

// WithTimeout sets the deadline of each unary call whose context has no deadline of its own (DefaultTimeout
// otherwise); 0 means no deadline. A context deadline always wins, longer or shorter. Streams are not affected:
// they run until the server ends them or their context is done.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d < 0 {
			return fmt.Errorf("visionrpc: expected a timeout >= 0, got %v", d)
		}
		c.timeout = d
		return nil
	}
}

// WithMaxMessageBytes limits the size of requests and responses, both ways (DefaultMaxMessageBytes otherwise).
// Keep it equal to the server's --max-message-bytes.
func WithMaxMessageBytes(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("visionrpc: expected max message bytes >= 1, got %d", n)
		}
		c.maxMessageBytes = n
		return nil
	}
}

// WithKeepalive sets the interval of HTTP/2 keepalive pings (DefaultKeepaliveTime otherwise); 0 turns
// keepalive off. Pings are sent only while a call is in flight (keepalive.ClientParameters.PermitWithoutStream
// false), and a ping unanswered for KeepaliveTimeout closes the connection, so a dead connection through a NAT
// or proxy is noticed within d + 10 s instead of gRPC's default of hours. The visionrpc server accepts pings
// every 10 s even when idle, but proxies and servers with gRPC's default policy answer pings on idle
// connections with GOAWAY "too_many_pings". Intervals below MinKeepaliveTime are refused.
func WithKeepalive(d time.Duration) Option {
	return func(c *config) error {
		if d != 0 && d < MinKeepaliveTime {
			return fmt.Errorf("visionrpc: expected a keepalive interval of 0 (off) or >= %v, got %v", MinKeepaliveTime, d)
		}
		c.keepaliveTime = d
		return nil
	}
}

// WithBlock makes Dial wait until the connection is ready (or Dial's context is done, or the first attempt
// fails) instead of connecting in the background on the first call.
func WithBlock() Option {
	return func(c *config) error {
		c.block = true
		return nil
	}
}

// WithoutStreamResume makes a stream end with the error of its call when the call breaks with UNAVAILABLE,
// instead of resuming it on a new call (see Client.Stream).
func WithoutStreamResume() Option {
	return func(c *config) error {
		c.streamResumeAttempts = 0
		return nil
	}
}

// WithStreamResumeAttempts sets how many calls in a row a broken stream re-issues without receiving a message
// before Recv returns the last error (DefaultStreamResumeAttempts otherwise). With the backoff of 50 ms doubling
// up to 2 s, the default of 8 gives a server about 7 s to come back.
func WithStreamResumeAttempts(n int) Option {
	return func(c *config) error {
		if n < 1 {
			return fmt.Errorf("visionrpc: expected stream resume attempts >= 1 (WithoutStreamResume turns resume off), got %d", n)
		}
		c.streamResumeAttempts = n
		return nil
	}
}

// WithDialOptions appends raw gRPC dial options (interceptors, a custom dialer, a service config); they are
// applied after the ones the options above produce and win over them.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) error {
		c.dialOptions = append(c.dialOptions, opts...)
		return nil
	}
}

// dialOptions turns the configuration into gRPC dial options.
func (c *config) grpcDialOptions() []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(c.creds),
		grpc.WithUserAgent(c.userAgent),
		grpc.WithDefaultServiceConfig(DefaultServiceConfig),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(c.maxMessageBytes),
			grpc.MaxCallSendMsgSize(c.maxMessageBytes),
		),
	}
	if c.keepaliveTime > 0 {
		opts = append(opts, grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                c.keepaliveTime,
			Timeout:             KeepaliveTimeout,
			PermitWithoutStream: false,
		}))
	}
	if c.apiKey != "" {
		secure := c.creds.Info().SecurityProtocol != "insecure"
		opts = append(opts, grpc.WithPerRPCCredentials(apiKeyCredentials{key: c.apiKey, secure: secure}))
	}
	opts = append(opts, c.dialOptions...)
	// Last, as grpc-go takes the first resolver of a scheme: resolvers in c.dialOptions win over these.
	return append(opts, addressListResolvers()...)
}
