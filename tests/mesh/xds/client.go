package main

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and the xDS balancers

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// call is one output line.
type call struct {
	Replica string `json:"replica"` // the peer that answered ("" when none did)
	Code    string `json:"code"`
	AtMs    int64  `json:"at_ms"` // Unix time of the call's end
}

func runClient(args []string) error {
	flags := flag.NewFlagSet("client", flag.ContinueOnError)
	target := flags.String("target", "xds:///visionrpc", "the gRPC target")
	imagePath := flags.String("image", "", "an image file to send with each Infer")
	interval := flags.Duration("interval", 20*time.Millisecond, "pause between calls")
	if err := flags.Parse(args); err != nil {
		return err
	}
	image, err := os.ReadFile(*imagePath)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	stub := visionrpcv1.NewInferenceServiceClient(conn)
	request := &visionrpcv1.InferRequest{
		Images: []*visionrpcv1.Image{{Source: &visionrpcv1.Image_Encoded{Encoded: image}}},
	}
	var stop atomic.Bool
	go func() { // the test closes stdin to stop the client
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop.Store(true)
	}()
	out := json.NewEncoder(os.Stdout)
	for !stop.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var answered peer.Peer
		// WaitForReady: before the first xDS answer there is no replica yet; wait for one instead of failing.
		_, err := stub.Infer(ctx, request, grpc.Peer(&answered), grpc.WaitForReady(true))
		cancel()
		line := call{Code: status.Code(err).String(), AtMs: time.Now().UnixMilli()}
		if answered.Addr != nil {
			line.Replica = answered.Addr.String()
		}
		if err := out.Encode(line); err != nil {
			return err
		}
		time.Sleep(*interval)
	}
	return nil
}
