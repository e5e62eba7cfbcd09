package visionrpc

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc/credentials"
)

// DefaultServiceConfig is the gRPC service config a client uses unless WithDialOptions gives another:
// retries of UNAVAILABLE (a replica draining or restarting) with exponential backoff for Infer and the model
// service, honouring the server's grpc-retry-pushback-ms. StreamPredictions is left out: Client.Stream
// resumes streams itself, from the last message it saw, and counts its own attempts. Balancing stays
// pick_first: a stream resumed after a connection recycle must reach the replica holding its replay ring.
const DefaultServiceConfig = `{
  "methodConfig": [{
    "name": [{"service": "visionrpc.v1.InferenceService", "method": "Infer"}, {"service": "visionrpc.v1.ModelService"}],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// WithAPIKey sends key with every call as "authorization: Bearer <key>" (per-RPC credentials). The server's
// --api-keys-file (or, for LoadModel and UnloadModel, --admin-keys-file) must hold it. On a plaintext channel
// the key travels in the clear: use it with TLS, or inside a mesh whose sidecars encrypt the hop.
func WithAPIKey(key string) Option {
	return func(c *config) error {
		key = strings.TrimSpace(key)
		if key == "" {
			return fmt.Errorf("visionrpc: expected a non-empty API key")
		}
		c.apiKey = key
		return nil
	}
}

// WithTLSFiles makes the channel use TLS, trusting the CA in caFile ("" for the system roots) and, when
// certFile and keyFile are given, presenting that client certificate (mutual TLS).
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(c *config) error {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("visionrpc: reading the CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("visionrpc: %s holds no PEM certificate", caFile)
			}
			cfg.RootCAs = pool
		}
		if (certFile == "") != (keyFile == "") {
			return fmt.Errorf("visionrpc: a client certificate needs both certFile and keyFile")
		}
		if certFile != "" {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("visionrpc: loading the client certificate: %w", err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		c.creds = credentials.NewTLS(cfg)
		return nil
	}
}

// apiKeyCredentials are per-RPC credentials carrying an API key.
type apiKeyCredentials struct {
	key    string
	secure bool
}

func (k apiKeyCredentials) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + k.key}, nil
}

// RequireTransportSecurity is false on plaintext channels: inside a service mesh the sidecars encrypt the
// hop, and on loopback there is none.
func (k apiKeyCredentials) RequireTransportSecurity() bool { return k.secure }
