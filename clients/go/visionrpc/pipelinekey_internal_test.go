package visionrpc

import (
	"encoding/json"
	"os"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// The cases every SDK checks: the same request gives the same key in Python, Go, Node and C#.
func TestPipelineKeyCases(t *testing.T) {
	raw, err := os.ReadFile("../../../tests/mesh/pipeline_key_cases.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Cases []struct {
			Name      string          `json:"name"`
			Request   json.RawMessage `json:"request"`
			Canonical *string         `json:"canonical"`
			Key       *string         `json:"key"`
		} `json:"cases"`
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) == 0 {
		t.Fatal("no cases")
	}
	for _, c := range file.Cases {
		t.Run(c.Name, func(t *testing.T) {
			req := &visionrpcv1.StreamPredictionsRequest{}
			if err := protojson.Unmarshal(c.Request, req); err != nil {
				t.Fatal(err)
			}
			want := ""
			if c.Key != nil {
				want = *c.Key
			}
			if got := PipelineKey(req); got != want {
				t.Errorf("expected key %q, got %q", want, got)
			}
			if c.Canonical != nil {
				if got := canonicalPipelineText(req); got != *c.Canonical {
					t.Errorf("expected text\n%q\ngot\n%q", *c.Canonical, got)
				}
			}
		})
	}
}

func TestPipelineKeyOfAnEmptyRequest(t *testing.T) {
	// No options messages at all: read as unset, never a nil dereference.
	if PipelineKey(&visionrpcv1.StreamPredictionsRequest{}) == "" {
		t.Fatal("expected a key")
	}
}
