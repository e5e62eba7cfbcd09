// Package visionrpc is the Go client of a visionrpc server: gRPC computer-vision inference on images (Infer)
// and on server-side video streams (Stream), model management and health checking.
//
// It is a thin layer over the generated stubs of package visionrpcv1
// (github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1): requests and responses are the generated
// messages, while the client adds explicit channel settings (message size limits, keepalive, a default deadline),
// image helpers, one error type, *Error, with the server's rich error details decoded, and streams that resume
// on a new call when their connection breaks (Client.Stream).
//
//	client, err := visionrpc.Dial(ctx, "127.0.0.1:50051")
//	if err != nil {
//		return err
//	}
//	defer client.Close()
//	resp, err := client.Infer(ctx, []visionrpc.Image{visionrpc.ImageFromFile("coffee.png")}, visionrpc.WithConfidence(0.3))
//	var rpcErr *visionrpc.Error
//	if errors.As(err, &rpcErr) && rpcErr.Code == codes.InvalidArgument {
//		log.Fatalf("bad request: %s %v", rpcErr.Reason, rpcErr.FieldViolations)
//	}
//	for _, d := range resp.GetPredictions()[0].GetDetections() {
//		fmt.Println(d.GetClassName(), d.GetConfidence(), d.GetBox())
//	}
package visionrpc
