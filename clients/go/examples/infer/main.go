// Command infer sends photos to a visionrpc server and prints what it detects.
//
//	go run ./examples/infer [-model centerface] [-confidence 0.3] 127.0.0.1:50051 coffee.png [more.jpg ...]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

func main() {
	model := flag.String("model", "", `model id, "name" or "name/version" (default: the server's default model)`)
	confidence := flag.Float64("confidence", -1, "minimum confidence in [0, 1] (default: the model's)")
	timeout := flag.Duration("timeout", 60*time.Second, "deadline of the request")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags] ADDRESS IMAGE...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() < 2 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(flag.Arg(0), flag.Args()[1:], *model, *confidence, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		var rpcErr *visionrpc.Error
		if errors.As(err, &rpcErr) && rpcErr.Retryable() {
			os.Exit(75) // EX_TEMPFAIL: worth trying again
		}
		os.Exit(1)
	}
}

func run(address string, paths []string, model string, confidence float64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	client, err := visionrpc.Dial(ctx, address)
	if err != nil {
		return err
	}
	defer client.Close()

	images := make([]visionrpc.Image, len(paths))
	for i, path := range paths {
		images[i] = visionrpc.ImageFromFile(path)
	}
	var opts []visionrpc.InferOption
	if model != "" {
		opts = append(opts, visionrpc.WithModel(model))
	}
	if confidence >= 0 {
		opts = append(opts, visionrpc.WithConfidence(float32(confidence)))
	}

	resp, err := client.Infer(ctx, images, opts...)
	if err != nil {
		return err
	}
	engine := resp.GetEngine()
	fmt.Printf("%s/%s on %s (%s, %s)\n", resp.GetModelName(), resp.GetModelVersion(),
		engine.GetEngine(), engine.GetDevice(), engine.GetPrecision())
	for i, prediction := range resp.GetPredictions() {
		size := prediction.GetImageSize()
		fmt.Printf("%s (%dx%d, %.1f ms):\n", paths[i], size.GetWidth(), size.GetHeight(),
			prediction.GetTimings().GetTotalMs())
		for _, d := range prediction.GetDetections() {
			b := d.GetBox()
			fmt.Printf("  %-12s %.2f [%.0f, %.0f, %.0f, %.0f]", d.GetClassName(), d.GetConfidence(),
				b.GetXMin(), b.GetYMin(), b.GetXMax(), b.GetYMax())
			if n := len(d.GetKeypoints()); n > 0 {
				fmt.Printf(" %d keypoints", n)
			}
			fmt.Println()
		}
		for _, c := range prediction.GetClassifications() {
			fmt.Printf("  %-12s %.2f\n", c.GetClassName(), c.GetConfidence())
		}
	}
	return nil
}
