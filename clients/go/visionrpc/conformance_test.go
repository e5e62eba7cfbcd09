package visionrpc_test

// The cross-language conformance table, tests/conformance/cases.json, run through this client against a real
// server. The harness starts one and exports its address and a folder of photos:
//
//	python tests/conformance/harness.py --cwd clients/go -- go test ./...     (or scripts/test-go)

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

const casesPath = "../../../tests/conformance/cases.json"

// caseTimeout bounds one case: a first request may load (and, on a cold cache, fetch and convert) a model.
const caseTimeout = 300 * time.Second

type conformanceCase struct {
	Name string `json:"name"`
	RPC  string `json:"rpc"`
	// Server is "" (the plain server) or "recycling" (connections recycled every ~2 s).
	Server string `json:"server"`
	// Requires names a feature the case needs: "shared_memory" (clients on the server's host).
	Requires string          `json:"requires"`
	Request  json.RawMessage `json:"request"`
	Expect   expectation     `json:"expect"`
}

type inferRequestSpec struct {
	ModelID string       `json:"model_id"`
	Images  []imageSpec  `json:"images"`
	Options *optionsSpec `json:"options"`
}

type imageSpec struct {
	File         string            `json:"file"`
	Base64       string            `json:"base64"`
	SharedMemory *sharedMemorySpec `json:"shared_memory"`
}

// sharedMemorySpec is a photo written into a region of its own (its reference's offset overridden by Offset),
// or a reference to a Region nobody registered.
type sharedMemorySpec struct {
	File   string  `json:"file"`
	Offset *uint64 `json:"offset"`
	Region string  `json:"region"`
	Width  uint32  `json:"width"`
	Height uint32  `json:"height"`
}

// registerSpec is a RegisterSharedMemory case: a region of ByteSize bytes named under Prefix.
type registerSpec struct {
	Prefix   string `json:"prefix"`
	ByteSize int    `json:"byte_size"`
}

// optionsSpec is InferOptions in proto field names, mapped onto the client's InferOptions.
type optionsSpec struct {
	ConfidenceThreshold *float32 `json:"confidence_threshold"`
	IouThreshold        *float32 `json:"iou_threshold"`
	MaxDetections       *uint32  `json:"max_detections"`
	ClassIDs            []uint32 `json:"class_ids"`
	ClassNames          []string `json:"class_names"`
	TopK                *uint32  `json:"top_k"`
}

type expectation struct {
	// Infer success.
	Predictions []predictionExpect `json:"predictions"`
	// StreamPredictions success.
	Frames      *int     `json:"frames"`
	FirstStatus string   `json:"first_status"`
	LastStatus  string   `json:"last_status"`
	ClassesSeen []string `json:"classes_seen"`
	// Each must match a detection of some frame.
	DetectionsSeen    []detectionExpect `json:"detections_seen"`
	CancelAfterFrames *int              `json:"cancel_after_frames"`
	// Resumed StreamPredictions ("server": "recycling").
	SequenceNumbers string `json:"sequence_numbers"` // "each_once_in_order": exactly 0..frames-1
	MinResumes      *int   `json:"min_resumes"`
	ResumeOutcome   string `json:"resume_outcome"` // of every RESUMED status
	// InferStream success: one per frame, in order.
	Answers []answerExpect `json:"answers"`
	// Errors.
	Code   *codes.Code `json:"code"`
	Reason string      `json:"reason"`
	Field  *string     `json:"field"`
}

type inferStreamRequestSpec struct {
	// Config is InferStreamConfig in proto JSON.
	Config json.RawMessage `json:"config"`
	Frames []frameSpec     `json:"frames"`
}

type frameSpec struct {
	File           string `json:"file"`
	Base64         string `json:"base64"`
	SequenceNumber uint64 `json:"sequence_number"`
	SourceIndex    uint32 `json:"source_index"`
}

type answerExpect struct {
	SequenceNumber uint64            `json:"sequence_number"`
	SourceIndex    uint32            `json:"source_index"`
	Prediction     *predictionExpect `json:"prediction"`
	Error          *expectation      `json:"error"`
	Outcome        string            `json:"outcome"` // "prediction_or_dropped"
}

type predictionExpect struct {
	ImageSize         []uint32          `json:"image_size"`
	DetectionsInclude []detectionExpect `json:"detections_include"`
	OnlyClasses       []string          `json:"only_classes"`
}

type detectionExpect struct {
	ClassName     string    `json:"class_name"`
	MinConfidence float32   `json:"min_confidence"`
	Box           []float32 `json:"box"`
	BoxTolerance  float32   `json:"box_tolerance"`
	Keypoints     *int      `json:"keypoints"`
	// The derived pose model's keypoints 0, 1, 3, 4 sit on the box's corners, each with its confidence.
	KeypointsAtBoxCorners bool `json:"keypoints_at_box_corners"`
	// "lower_right_half": the derived segmentation model's mask, the box's half below its anti-diagonal.
	Mask string `json:"mask"`
}

// decodeStrict fails on fields this runner does not know, so a new kind of expectation in cases.json cannot
// pass unchecked.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// serverAddress is the server under test, from the environment variable the harness sets; without one the
// suite fails (a skip would pass CI silently).
func serverAddress(t *testing.T, variable string) string {
	t.Helper()
	address := os.Getenv(variable)
	if address == "" {
		t.Fatal(variable + " is not set: the conformance suite needs real visionrpc servers. From the " +
			"repository root run `scripts/test-go`, or `python tests/conformance/harness.py --cwd clients/go -- go test ./...`, " +
			"which starts them and sets VISIONRPC_ADDRESS, VISIONRPC_RECYCLING_ADDRESS and VISIONRPC_CONFORMANCE_MEDIA")
	}
	return address
}

// dialServer connects to the plain server.
func dialServer(t *testing.T) *visionrpc.Client {
	t.Helper()
	return dial(t, serverAddress(t, "VISIONRPC_ADDRESS"))
}

func dial(t *testing.T, address string) *visionrpc.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := visionrpc.Dial(ctx, address, visionrpc.WithTimeout(caseTimeout), visionrpc.WithBlock())
	if err != nil {
		t.Fatalf("dial %s: %v", address, err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func TestConformance(t *testing.T) {
	clients := map[string]*visionrpc.Client{
		"":          dialServer(t),
		"recycling": dial(t, serverAddress(t, "VISIONRPC_RECYCLING_ADDRESS")),
	}
	data, err := os.ReadFile(casesPath)
	if err != nil {
		t.Fatal(err)
	}
	var cases []conformanceCase
	if err := decodeStrict(data, &cases); err != nil {
		t.Fatalf("%s: %v", casesPath, err)
	}
	if len(cases) == 0 {
		t.Fatalf("%s has no cases", casesPath)
	}
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			client, ok := clients[tc.Server]
			if !ok {
				t.Fatalf("unknown server %q", tc.Server)
			}
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			defer cancel()
			switch tc.RPC {
			case "Infer":
				runInferCase(ctx, t, client, tc)
			case "StreamPredictions":
				runStreamCase(ctx, t, client, tc)
			case "InferStream":
				runInferStreamCase(ctx, t, client, tc)
			case "RegisterSharedMemory":
				runRegisterCase(ctx, t, client, tc)
			default:
				t.Fatalf("unknown rpc %q", tc.RPC)
			}
		})
	}
}

func runInferCase(ctx context.Context, t *testing.T, client *visionrpc.Client, tc conformanceCase) {
	var spec inferRequestSpec
	if err := decodeStrict(tc.Request, &spec); err != nil {
		t.Fatalf("request: %v", err)
	}
	images := make([]visionrpc.Image, len(spec.Images))
	for i, im := range spec.Images {
		if im.SharedMemory != nil {
			images[i] = sharedMemoryImage(ctx, t, client, im.SharedMemory)
			continue
		}
		images[i] = caseImage(t, im)
	}
	opts := inferOptions(spec.Options)
	if spec.ModelID != "" {
		opts = append(opts, visionrpc.WithModel(spec.ModelID))
	}
	resp, err := client.Infer(ctx, images, opts...)
	if tc.Expect.Code != nil {
		checkError(t, err, tc.Expect)
		return
	}
	if err != nil {
		t.Fatalf("Infer: %v", err)
	}
	predictions := resp.GetPredictions()
	if len(predictions) != len(tc.Expect.Predictions) {
		t.Fatalf("%d predictions, want %d", len(predictions), len(tc.Expect.Predictions))
	}
	for i, want := range tc.Expect.Predictions {
		checkPrediction(t, i, predictions[i], want)
	}
}

func runInferStreamCase(ctx context.Context, t *testing.T, client *visionrpc.Client, tc conformanceCase) {
	var spec inferStreamRequestSpec
	if err := decodeStrict(tc.Request, &spec); err != nil {
		t.Fatalf("request: %v", err)
	}
	config := &visionrpcv1.InferStreamConfig{}
	if len(spec.Config) > 0 {
		if err := protojson.Unmarshal(spec.Config, config); err != nil {
			t.Fatalf("request config: %v", err)
		}
	}
	frames := make([]visionrpc.Frame, len(spec.Frames))
	for i, f := range spec.Frames {
		frames[i] = visionrpc.Frame{
			Image:          caseImage(t, imageSpec{File: f.File, Base64: f.Base64}),
			SequenceNumber: f.SequenceNumber,
			SourceIndex:    f.SourceIndex,
		}
	}
	answers, err := pushAll(ctx, t, client, config, frames)
	if tc.Expect.Code != nil {
		checkError(t, err, tc.Expect)
		return
	}
	if err != nil {
		t.Fatalf("InferStream: %v", err)
	}
	if len(answers) != len(tc.Expect.Answers) {
		t.Fatalf("%d answers, want %d", len(answers), len(tc.Expect.Answers))
	}
	for i, want := range tc.Expect.Answers {
		got := answers[i]
		if got.GetSequenceNumber() != want.SequenceNumber || got.GetSourceIndex() != want.SourceIndex {
			t.Errorf("answers[%d]: frame (%d, %d), want (%d, %d)", i, got.GetSourceIndex(), got.GetSequenceNumber(),
				want.SourceIndex, want.SequenceNumber)
		}
		switch {
		case want.Prediction != nil:
			if got.GetPrediction() == nil {
				t.Errorf("answers[%d]: %v, want a prediction", i, got)
				continue
			}
			checkPrediction(t, i, got.GetPrediction(), *want.Prediction)
		case want.Error != nil:
			refused := visionrpc.AnswerError(got)
			if refused == nil {
				t.Errorf("answers[%d]: %v, want an error", i, got)
				continue
			}
			checkError(t, refused, *want.Error)
		case want.Outcome == "prediction_or_dropped":
			if got.GetPrediction() == nil && !got.GetDropped() {
				t.Errorf("answers[%d]: %v, want a prediction or dropped", i, got)
			}
		default:
			t.Fatalf("answers[%d]: unknown expectation %+v", i, want)
		}
	}
}

// sharedMemoryImage writes the spec's photo (RGB) into a region made for it, closed when the test ends.
func sharedMemoryImage(ctx context.Context, t *testing.T, client *visionrpc.Client, spec *sharedMemorySpec) visionrpc.Image {
	t.Helper()
	if spec.Region != "" {
		return visionrpc.ImageFromSharedMemory(spec.Region, 0, spec.Width, spec.Height, rgbOrder)
	}
	pixels, width, height := photoRGB(t, spec.File)
	region := createRegion(ctx, t, client, len(pixels))
	if _, err := region.Write(pixels, 0, width, height, rgbOrder); err != nil {
		t.Fatal(err)
	}
	offset := uint64(0)
	if spec.Offset != nil {
		offset = *spec.Offset
	}
	return visionrpc.ImageFromSharedMemory(region.Name, offset, width, height, rgbOrder)
}

func runRegisterCase(ctx context.Context, t *testing.T, client *visionrpc.Client, tc conformanceCase) {
	var spec registerSpec
	if err := decodeStrict(tc.Request, &spec); err != nil {
		t.Fatalf("request: %v", err)
	}
	region, err := client.CreateSharedMemory(ctx, spec.ByteSize, visionrpc.WithSharedMemoryPrefix(spec.Prefix))
	if err == nil {
		_ = region.Close()
	}
	if tc.Expect.Code == nil {
		if err != nil {
			t.Fatalf("CreateSharedMemory: %v", err)
		}
		return
	}
	checkError(t, err, tc.Expect)
}

func caseImage(t *testing.T, spec imageSpec) visionrpc.Image {
	t.Helper()
	switch {
	case spec.File != "" && spec.Base64 == "":
		media := os.Getenv("VISIONRPC_CONFORMANCE_MEDIA")
		if media == "" {
			t.Fatal("VISIONRPC_CONFORMANCE_MEDIA is not set (the harness sets it to a folder of the cases' photos)")
		}
		return visionrpc.ImageFromFile(filepath.Join(media, spec.File))
	case spec.Base64 != "" && spec.File == "":
		data, err := base64.StdEncoding.DecodeString(spec.Base64)
		if err != nil {
			t.Fatalf("image base64: %v", err)
		}
		return visionrpc.ImageFromBytes(data)
	}
	t.Fatalf("expected an image with one of file or base64, got %+v", spec)
	return visionrpc.Image{}
}

func inferOptions(spec *optionsSpec) []visionrpc.InferOption {
	if spec == nil {
		return nil
	}
	var opts []visionrpc.InferOption
	if spec.ConfidenceThreshold != nil {
		opts = append(opts, visionrpc.WithConfidence(*spec.ConfidenceThreshold))
	}
	if spec.IouThreshold != nil {
		opts = append(opts, visionrpc.WithIoU(*spec.IouThreshold))
	}
	if spec.MaxDetections != nil {
		opts = append(opts, visionrpc.WithMaxDetections(*spec.MaxDetections))
	}
	if len(spec.ClassIDs) > 0 {
		opts = append(opts, visionrpc.WithClassIDs(spec.ClassIDs...))
	}
	if len(spec.ClassNames) > 0 {
		opts = append(opts, visionrpc.WithClassNames(spec.ClassNames...))
	}
	if spec.TopK != nil {
		opts = append(opts, visionrpc.WithTopK(*spec.TopK))
	}
	return opts
}

func checkPrediction(t *testing.T, index int, got *visionrpcv1.ImagePrediction, want predictionExpect) {
	t.Helper()
	if want.ImageSize != nil {
		size := []uint32{got.GetImageSize().GetWidth(), got.GetImageSize().GetHeight()}
		if !slices.Equal(size, want.ImageSize) {
			t.Errorf("predictions[%d]: image size %v, want %v", index, size, want.ImageSize)
		}
	}
	for _, wanted := range want.DetectionsInclude {
		if !slices.ContainsFunc(got.GetDetections(), func(d *visionrpcv1.Detection) bool { return detectionMatches(d, wanted) }) {
			t.Errorf("predictions[%d]: no detection matching %+v in %v", index, wanted, got.GetDetections())
		}
	}
	if want.OnlyClasses != nil {
		for _, d := range got.GetDetections() {
			if !slices.Contains(want.OnlyClasses, d.GetClassName()) {
				t.Errorf("predictions[%d]: detection of class %q, want only %v", index, d.GetClassName(), want.OnlyClasses)
			}
		}
	}
}

func detectionMatches(d *visionrpcv1.Detection, want detectionExpect) bool {
	if d.GetClassName() != want.ClassName || d.GetConfidence() < want.MinConfidence {
		return false
	}
	if want.Box != nil {
		b := d.GetBox()
		got := []float32{b.GetXMin(), b.GetYMin(), b.GetXMax(), b.GetYMax()}
		if len(want.Box) != len(got) {
			return false
		}
		for i := range got {
			if math.Abs(float64(got[i]-want.Box[i])) > float64(want.BoxTolerance) {
				return false
			}
		}
	}
	if want.Keypoints != nil && len(d.GetKeypoints()) != *want.Keypoints {
		return false
	}
	if want.KeypointsAtBoxCorners && !keypointsAtBoxCorners(d) {
		return false
	}
	switch want.Mask {
	case "":
		return true
	case "lower_right_half":
		return maskIsLowerRightHalf(d)
	default:
		panic("unknown mask expectation " + want.Mask)
	}
}

// keypointsAtBoxCorners: keypoints 0, 1, 3, 4 at the box's corners (0.01 px), each keypoint with the
// detection's confidence (1e-4).
func keypointsAtBoxCorners(d *visionrpcv1.Detection) bool {
	k, b := d.GetKeypoints(), d.GetBox()
	if len(k) != 5 {
		return false
	}
	corners := [][2]float32{{b.GetXMin(), b.GetYMin()}, {b.GetXMax(), b.GetYMin()}, {b.GetXMin(), b.GetYMax()}, {b.GetXMax(), b.GetYMax()}}
	for i, index := range []int{0, 1, 3, 4} {
		if math.Abs(float64(k[index].GetX()-corners[i][0])) > 0.01 || math.Abs(float64(k[index].GetY()-corners[i][1])) > 0.01 {
			return false
		}
	}
	for _, point := range k {
		if math.Abs(float64(point.GetConfidence()-d.GetConfidence())) > 1e-4 {
			return false
		}
	}
	return true
}

// maskIsLowerRightHalf: the mask's grid is the pixels whose centre is in the box, its top-left pixel is
// background, its bottom-right pixel object, and 40-60 % of it is object.
func maskIsLowerRightHalf(d *visionrpcv1.Detection) bool {
	m, b := d.GetMask(), d.GetBox()
	if m == nil || m.GetWidth() == 0 || m.GetHeight() == 0 {
		return false
	}
	grid := func(v float32) int64 { return int64(math.Ceil(float64(v) - 0.5)) }
	left, top := int64(m.GetLeft()), int64(m.GetTop())
	if left != grid(b.GetXMin()) || top != grid(b.GetYMin()) ||
		left+int64(m.GetWidth()) != grid(b.GetXMax()) || top+int64(m.GetHeight()) != grid(b.GetYMax()) {
		return false
	}
	rows := visionrpc.MaskRows(m)
	fraction := float64(visionrpc.MaskArea(m)) / float64(m.GetWidth()*m.GetHeight())
	return !rows[0][0] && rows[len(rows)-1][m.GetWidth()-1] && fraction >= 0.4 && fraction <= 0.6
}

func checkError(t *testing.T, err error, want expectation) {
	t.Helper()
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) {
		t.Fatalf("got %v, want an *Error with code %v", err, *want.Code)
	}
	if rpcErr.Code != *want.Code {
		t.Errorf("code %v, want %v (%v)", rpcErr.Code, *want.Code, rpcErr)
	}
	if rpcErr.Reason != want.Reason {
		t.Errorf("reason %q, want %q (%v)", rpcErr.Reason, want.Reason, rpcErr)
	}
	if rpcErr.Domain != "visionrpc.dev" {
		t.Errorf("domain %q, want visionrpc.dev", rpcErr.Domain)
	}
	if want.Field != nil {
		if len(rpcErr.FieldViolations) == 0 || rpcErr.FieldViolations[0].Field != *want.Field {
			t.Errorf("field violations %v, want the first on %q", rpcErr.FieldViolations, *want.Field)
		}
	}
}

func runStreamCase(ctx context.Context, t *testing.T, client *visionrpc.Client, tc conformanceCase) {
	// The request is StreamPredictionsRequest in proto JSON; protojson refuses unknown fields.
	req := &visionrpcv1.StreamPredictionsRequest{}
	if err := protojson.Unmarshal(tc.Request, req); err != nil {
		t.Fatalf("request: %v", err)
	}
	stream, err := client.Stream(ctx, req)
	if err != nil {
		t.Fatalf("Stream: %v", err)
	}
	defer stream.Close()

	var frames []*visionrpcv1.FramePrediction
	var statuses []*visionrpcv1.StreamStatus
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			if tc.Expect.Code != nil {
				checkError(t, err, tc.Expect)
				return
			}
			t.Fatalf("Recv after %d frames: %v", len(frames), err)
		}
		if frame := msg.GetFrame(); frame != nil {
			// A resume that repeats or skips frames fails here, not at the case's timeout: a server that
			// ignores StreamResume restarts the file on every resume and, with connections shorter than the
			// file, never reaches its end.
			if want := uint64(len(frames)); tc.Expect.SequenceNumbers == "each_once_in_order" && frame.GetSequenceNumber() != want {
				t.Fatalf("frame %d has sequence number %d after %d resumes, want %d (every frame once, in order)",
					len(frames), frame.GetSequenceNumber(), stream.Resumes(), want)
			}
			frames = append(frames, frame)
			if n := tc.Expect.CancelAfterFrames; n != nil && len(frames) == *n {
				stream.Close() // the next Recv ends the loop with io.EOF
			}
		} else {
			statuses = append(statuses, msg.GetStatus())
		}
	}
	switch {
	case tc.Expect.Code != nil:
		t.Fatalf("the stream ended normally after %d frames, want code %v", len(frames), *tc.Expect.Code)
	case tc.Expect.CancelAfterFrames != nil:
		if len(frames) != *tc.Expect.CancelAfterFrames {
			t.Errorf("%d frames before the clean end, want %d", len(frames), *tc.Expect.CancelAfterFrames)
		}
	default:
		checkStream(t, frames, statuses, tc.Expect)
		checkResumes(t, statuses, stream.Resumes(), tc.Expect)
	}
}

func checkStream(t *testing.T, frames []*visionrpcv1.FramePrediction, statuses []*visionrpcv1.StreamStatus, want expectation) {
	t.Helper()
	if want.Frames != nil && len(frames) != *want.Frames {
		t.Errorf("%d frames, want %d", len(frames), *want.Frames)
	}
	// RESUMED statuses belong to the subscription, not to the stream: first and last are the stream's own.
	statuses = slices.DeleteFunc(slices.Clone(statuses), func(s *visionrpcv1.StreamStatus) bool {
		return s.GetEvent() == visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED
	})
	if len(statuses) == 0 {
		t.Fatal("no status messages")
	}
	if want.FirstStatus != "" && statuses[0].GetEvent().String() != want.FirstStatus {
		t.Errorf("first status %v, want %s", statuses[0].GetEvent(), want.FirstStatus)
	}
	if want.LastStatus != "" && statuses[len(statuses)-1].GetEvent().String() != want.LastStatus {
		t.Errorf("last status %v, want %s", statuses[len(statuses)-1].GetEvent(), want.LastStatus)
	}
	seen := map[string]bool{}
	for _, f := range frames {
		for _, d := range f.GetPrediction().GetDetections() {
			seen[d.GetClassName()] = true
		}
	}
	for _, class := range want.ClassesSeen {
		if !seen[class] {
			t.Errorf("class %q never detected in %d frames", class, len(frames))
		}
	}
	for _, wanted := range want.DetectionsSeen {
		found := slices.ContainsFunc(frames, func(f *visionrpcv1.FramePrediction) bool {
			return slices.ContainsFunc(f.GetPrediction().GetDetections(), func(d *visionrpcv1.Detection) bool {
				return detectionMatches(d, wanted)
			})
		})
		if !found {
			t.Errorf("no detection matching %+v in %d frames", wanted, len(frames))
		}
	}
}

func checkResumes(t *testing.T, statuses []*visionrpcv1.StreamStatus, resumes int, want expectation) {
	t.Helper()
	switch want.SequenceNumbers {
	case "", "each_once_in_order": // checked as the frames arrived; with "frames", the count too
	default:
		t.Fatalf("unknown sequence_numbers expectation %q", want.SequenceNumbers)
	}
	var resumed []*visionrpcv1.StreamStatus
	for _, s := range statuses {
		if s.GetEvent() == visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED {
			resumed = append(resumed, s)
		}
	}
	if resumes != len(resumed) {
		t.Errorf("Resumes() = %d, but %d RESUMED statuses arrived", resumes, len(resumed))
	}
	if want.MinResumes != nil && len(resumed) < *want.MinResumes {
		t.Errorf("%d resumes, want at least %d", len(resumed), *want.MinResumes)
	}
	if want.ResumeOutcome != "" {
		for i, s := range resumed {
			if got := s.GetResume().GetOutcome().String(); got != want.ResumeOutcome {
				t.Errorf("resume %d: outcome %s (%v), want %s", i, got, s.GetResume(), want.ResumeOutcome)
			}
		}
	}
}

// Beyond the table: what only a real server shows.

func TestServerHealthAndModels(t *testing.T) {
	client := dialServer(t)
	ctx := context.Background()
	for _, service := range []string{"", visionrpc.InferenceServiceName} {
		if s, err := client.Health(ctx, service); err != nil || s.String() != "SERVING" {
			t.Errorf("Health(%q) = %v, %v; want SERVING", service, s, err)
		}
	}
	models, err := client.ListModels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(models, func(m *visionrpcv1.Model) bool { return m.GetName() == "yolov3-tiny-coco" }) {
		t.Errorf("ListModels has no yolov3-tiny-coco: %v", models)
	}
	model, err := client.GetModel(ctx, "yolov3-tiny-coco")
	if err != nil || model.GetState() != visionrpcv1.ModelState_MODEL_STATE_READY || len(model.GetClassNames()) != 80 {
		t.Errorf("GetModel(yolov3-tiny-coco) = %v, %v; want READY with 80 classes", model, err)
	}
	_, err = client.GetModel(ctx, "no-such-model")
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.NotFound || rpcErr.Reason != "MODEL_NOT_FOUND" {
		t.Errorf("GetModel(no-such-model) = %v, want NotFound MODEL_NOT_FOUND", err)
	}
}

func TestServerStreamContextCancel(t *testing.T) {
	client := dialServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := client.Stream(ctx, &visionrpcv1.StreamPredictionsRequest{
		Sources:       []*visionrpcv1.VideoSource{visionrpc.PathSource("bikes.mp4")},
		StreamOptions: &visionrpcv1.StreamOptions{MaxFps: ptr(float32(10))},
	})
	if err != nil {
		t.Fatal(err)
	}
	for frames := 0; frames < 2; {
		msg, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetFrame() != nil {
			frames++
		}
	}
	cancel()
	for err == nil {
		_, err = stream.Recv()
	}
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) || rpcErr.Code != codes.Canceled || !errors.Is(err, context.Canceled) {
		t.Errorf("after cancelling the context: %v, want a Canceled *Error wrapping context.Canceled", err)
	}
}

func ptr[T any](v T) *T { return &v }
