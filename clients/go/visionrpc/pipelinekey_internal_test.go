package visionrpc

import (
	"context"
	"encoding/json"
	"os"
	"testing"

	"google.golang.org/grpc/metadata"
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

func TestEveryCallOfAStreamCarriesItsKey(t *testing.T) {
	req := &visionrpcv1.StreamPredictionsRequest{Sources: []*visionrpcv1.VideoSource{PathSource("bikes.mp4")}}
	md, _ := metadata.FromOutgoingContext(withPipelineKey(context.Background(), req))
	if got := md.Get(PipelineKeyHeader); len(got) != 1 || got[0] != "cd33d2830f04d7eec77831256e9432f9" {
		t.Fatalf("expected the key of the first shared case, got %v", got)
	}
	join := &visionrpcv1.StreamPredictionsRequest{StreamId: "s-1"}
	if md, _ := metadata.FromOutgoingContext(withPipelineKey(context.Background(), join)); len(md.Get(PipelineKeyHeader)) != 0 {
		t.Fatal("a join by stream id must carry no key")
	}
}
