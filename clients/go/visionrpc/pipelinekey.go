package visionrpc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc/metadata"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// PipelineKeyHeader is the request header carrying a stream's affinity key. A proxy that hashes on it (nginx
// `hash $http_x_visionrpc_pipeline_key consistent`, an Istio DestinationRule's consistentHash) sends identical
// subscriptions to one replica, where they share one pipeline (docs/deploying.md).
const PipelineKeyHeader = "x-visionrpc-pipeline-key"

// PipelineKey is the request's stream affinity key, "" for a join by stream id. It hashes what decides a
// server-side pipeline (sources, model, inference and stream options), built exactly as every visionrpc SDK
// builds it: clients/python/_pipeline_key.py describes the text, tests/mesh/pipeline_key_cases.json checks it.
func PipelineKey(req *visionrpcv1.StreamPredictionsRequest) string {
	if req.GetStreamId() != "" {
		return ""
	}
	sum := sha256.Sum256([]byte(canonicalPipelineText(req)))
	return hex.EncodeToString(sum[:])[:32]
}

// withPipelineKey adds the request's key to the outgoing metadata, so every call of the stream (resumes
// included) carries it.
func withPipelineKey(ctx context.Context, req *visionrpcv1.StreamPredictionsRequest) context.Context {
	if key := PipelineKey(req); key != "" {
		return metadata.AppendToOutgoingContext(ctx, PipelineKeyHeader, key)
	}
	return ctx
}

func canonicalPipelineText(req *visionrpcv1.StreamPredictionsRequest) string {
	options, stream := req.GetOptions(), req.GetStreamOptions()
	if options == nil { // the optional fields are read directly below: nil messages read as all unset
		options = &visionrpcv1.InferOptions{}
	}
	if stream == nil {
		stream = &visionrpcv1.StreamOptions{}
	}
	lines := []string{"visionrpc-pipeline-key/v1", "model=" + lengthPrefixed(req.GetModelId())}
	for _, source := range req.GetSources() {
		lines = append(lines, "source="+sourceText(source))
	}
	ids := slices.Compact(slices.Sorted(slices.Values(options.GetClassIds())))
	idTexts := make([]string, len(ids))
	for i, id := range ids {
		idTexts[i] = strconv.FormatUint(uint64(id), 10)
	}
	names := slices.Compact(slices.Sorted(slices.Values(options.GetClassNames()))) // Go strings sort by bytes
	for i, name := range names {
		names[i] = lengthPrefixed(name)
	}
	var maxFps *float32
	if stream.GetMaxFps() != 0 {
		maxFps = stream.MaxFps
	}
	frameImage := stream.GetFrameImage()
	if frameImage == visionrpcv1.FrameImage_FRAME_IMAGE_UNSPECIFIED {
		frameImage = visionrpcv1.FrameImage_FRAME_IMAGE_NONE
	}
	jpegQuality := ""
	if stream.GetJpegQuality() != 0 {
		jpegQuality = strconv.FormatUint(uint64(stream.GetJpegQuality()), 10)
	}
	lines = append(lines,
		"confidence="+floatText(options.ConfidenceThreshold),
		"iou="+floatText(options.IouThreshold),
		"max_detections="+uintText(options.MaxDetections),
		"top_k="+uintText(options.TopK),
		"class_ids="+strings.Join(idTexts, ","),
		"class_names="+strings.Join(names, ","),
		"max_fps="+floatText(maxFps),
		fmt.Sprintf("frame_policy=%d", stream.GetFramePolicy()),
		fmt.Sprintf("frame_image=%d", frameImage),
		"jpeg_quality="+jpegQuality,
	)
	return strings.Join(lines, "\n") + "\n"
}

func sourceText(source *visionrpcv1.VideoSource) string {
	switch s := source.GetSource().(type) {
	case *visionrpcv1.VideoSource_Path:
		return "path:" + lengthPrefixed(s.Path)
	case *visionrpcv1.VideoSource_Url:
		return "url:" + lengthPrefixed(s.Url)
	case *visionrpcv1.VideoSource_Device:
		return "device:" + strconv.FormatUint(uint64(s.Device), 10)
	}
	return "none:"
}

func lengthPrefixed(text string) string { return strconv.Itoa(len(text)) + ":" + text }

// floatText is the float32's IEEE-754 bits in hex (the value that travels), "" when unset.
func floatText(value *float32) string {
	if value == nil {
		return ""
	}
	return fmt.Sprintf("%08x", math.Float32bits(*value))
}

func uintText(value *uint32) string {
	if value == nil {
		return ""
	}
	return strconv.FormatUint(uint64(*value), 10)
}
