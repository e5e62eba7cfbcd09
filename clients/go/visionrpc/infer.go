package visionrpc

import (
	"context"
	"fmt"
	"os"

	"google.golang.org/protobuf/proto"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// Image is one input image: encoded bytes, a file read when the request is built, raw pixels, or pixels in a
// registered shared-memory region (ImageFromSharedMemory, SharedMemoryRegion.Write). The zero Image is invalid.
type Image struct {
	kind    imageKind
	encoded []byte
	path    string
	raw     *visionrpcv1.RawImage
	shm     *visionrpcv1.SharedMemoryImage
}

type imageKind uint8

const (
	_ imageKind = iota // the zero Image
	imageEncoded
	imageFile
	imagePixels
	imageSharedMemory
)

// ImageFromBytes is an encoded image file's content: JPEG, PNG, BMP, WebP or GIF (first frame). The server
// decodes it and applies EXIF orientation.
func ImageFromBytes(encoded []byte) Image { return Image{kind: imageEncoded, encoded: encoded} }

// ImageFromFile is an encoded image file, read when Infer builds its request (a read error fails Infer before
// any RPC) and sent as is.
func ImageFromFile(path string) Image { return Image{kind: imageFile, path: path} }

// ImageFromPixels is uncompressed 8-bit pixels: rows top to bottom, channels interleaved in the given order, no
// row padding; len(pixels) must be width * height * channels. The server skips decoding entirely.
func ImageFromPixels(pixels []byte, width, height uint32, order visionrpcv1.ChannelOrder) Image {
	return Image{kind: imagePixels, raw: &visionrpcv1.RawImage{
		Data: pixels, Width: width, Height: height, ChannelOrder: order,
	}}
}

// Proto returns the image as the request message (reading it first when it comes from a file).
func (im Image) Proto() (*visionrpcv1.Image, error) {
	switch im.kind {
	case imagePixels:
		return &visionrpcv1.Image{Source: &visionrpcv1.Image_Raw{Raw: im.raw}}, nil
	case imageFile:
		data, err := os.ReadFile(im.path)
		if err != nil {
			return nil, fmt.Errorf("read image: %w", err)
		}
		return &visionrpcv1.Image{Source: &visionrpcv1.Image_Encoded{Encoded: data}}, nil
	case imageEncoded:
		return &visionrpcv1.Image{Source: &visionrpcv1.Image_Encoded{Encoded: im.encoded}}, nil
	case imageSharedMemory:
		return &visionrpcv1.Image{Source: &visionrpcv1.Image_SharedMemory{SharedMemory: im.shm}}, nil
	}
	return nil, fmt.Errorf("expected an image from ImageFromBytes, ImageFromFile or ImageFromPixels, got the zero Image")
}

// InferOption sets a field of an InferRequest. Options left out take the model's defaults
// (see Client.GetModel).
type InferOption func(*visionrpcv1.InferRequest)

// WithModel runs "name" (its newest version) or "name/version" instead of the server's default model.
func WithModel(modelID string) InferOption {
	return func(r *visionrpcv1.InferRequest) { r.ModelId = modelID }
}

// WithConfidence keeps detections with at least this confidence, in [0, 1].
func WithConfidence(threshold float32) InferOption {
	return func(r *visionrpcv1.InferRequest) { inferOptions(r).ConfidenceThreshold = proto.Float32(threshold) }
}

// WithIoU sets the IoU above which overlapping detections of one class are suppressed, in [0, 1].
func WithIoU(threshold float32) InferOption {
	return func(r *visionrpcv1.InferRequest) { inferOptions(r).IouThreshold = proto.Float32(threshold) }
}

// WithMaxDetections keeps at most n detections per image (n >= 1).
func WithMaxDetections(n uint32) InferOption {
	return func(r *visionrpcv1.InferRequest) { inferOptions(r).MaxDetections = proto.Uint32(n) }
}

// WithClassNames keeps only these classes (together with WithClassIDs: their union). Unknown names are an
// *Error with codes.InvalidArgument and reason UNKNOWN_CLASS.
func WithClassNames(names ...string) InferOption {
	return func(r *visionrpcv1.InferRequest) {
		o := inferOptions(r)
		o.ClassNames = append(o.ClassNames, names...)
	}
}

// WithClassIDs keeps only these class ids (together with WithClassNames: their union).
func WithClassIDs(ids ...uint32) InferOption {
	return func(r *visionrpcv1.InferRequest) {
		o := inferOptions(r)
		o.ClassIds = append(o.ClassIds, ids...)
	}
}

// WithTopK sets how many top classes a classifier returns (k >= 1).
func WithTopK(k uint32) InferOption {
	return func(r *visionrpcv1.InferRequest) { inferOptions(r).TopK = proto.Uint32(k) }
}

func inferOptions(r *visionrpcv1.InferRequest) *visionrpcv1.InferOptions {
	if r.Options == nil {
		r.Options = &visionrpcv1.InferOptions{}
	}
	return r.Options
}

// NewInferRequest builds the request Infer sends: the images in order, then the options applied in order.
func NewInferRequest(images []Image, opts ...InferOption) (*visionrpcv1.InferRequest, error) {
	req := &visionrpcv1.InferRequest{Images: make([]*visionrpcv1.Image, 0, len(images))}
	for i, im := range images {
		p, err := im.Proto()
		if err != nil {
			return nil, fmt.Errorf("visionrpc: images[%d]: %w", i, err)
		}
		req.Images = append(req.Images, p)
	}
	for _, opt := range opts {
		opt(req)
	}
	return req, nil
}

// Infer runs a model on images in one request and returns one prediction per image, in order
// (resp.GetPredictions()), with the model and engine that ran them.
//
// Errors: an image that cannot be read fails before any RPC; everything the server refuses is an *Error,
// e.g. codes.InvalidArgument with FieldViolations for an undecodable image, an option out of range or an
// empty image list, codes.NotFound for an unknown model.
func (c *Client) Infer(ctx context.Context, images []Image, opts ...InferOption) (*visionrpcv1.InferResponse, error) {
	req, err := NewInferRequest(images, opts...)
	if err != nil {
		return nil, err
	}
	return unary(ctx, c, c.inference.Infer, req)
}
