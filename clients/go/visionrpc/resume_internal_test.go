package visionrpc

import (
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

func TestResumeBackoff(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		attempt int
		random  float64
		want    time.Duration
	}{
		{attempt: 0, random: 0.5, want: 50 * ms},
		{attempt: 1, random: 0.5, want: 100 * ms},
		{attempt: 2, random: 0.5, want: 200 * ms},
		{attempt: 5, random: 0.5, want: 1600 * ms},
		{attempt: 6, random: 0.5, want: 2000 * ms}, // 3.2 s capped
		{attempt: 7, random: 0.5, want: 2000 * ms},
		{attempt: 1000, random: 0.5, want: 2000 * ms}, // no overflow
		{attempt: 0, random: 0, want: 40 * ms},        // -20%
		{attempt: 0, random: 0.999999, want: 60 * ms}, // +20%, just under
		{attempt: 9, random: 0, want: 1600 * ms},
	} {
		got := resumeBackoff(tc.attempt, tc.random)
		if diff := got - tc.want; diff < -ms/100 || diff > ms/100 {
			t.Errorf("resumeBackoff(%d, %v) = %v, want %v", tc.attempt, tc.random, got, tc.want)
		}
	}
}

func frameMsg(streamID string, cursor uint64, source uint32, seq uint64) *visionrpcv1.StreamPredictionsResponse {
	return &visionrpcv1.StreamPredictionsResponse{StreamId: streamID, Cursor: cursor, Payload: &visionrpcv1.StreamPredictionsResponse_Frame{
		Frame: &visionrpcv1.FramePrediction{SourceIndex: source, SequenceNumber: seq},
	}}
}

func statusMsg(streamID string, cursor uint64, event visionrpcv1.StreamEvent) *visionrpcv1.StreamPredictionsResponse {
	return &visionrpcv1.StreamPredictionsResponse{StreamId: streamID, Cursor: cursor, Payload: &visionrpcv1.StreamPredictionsResponse_Status{
		Status: &visionrpcv1.StreamStatus{Event: event},
	}}
}

func TestResumePointRequest(t *testing.T) {
	started := visionrpcv1.StreamEvent_STREAM_EVENT_STARTED
	resumed := visionrpcv1.StreamEvent_STREAM_EVENT_RESUMED
	for _, tc := range []struct {
		name     string
		received []*visionrpcv1.StreamPredictionsResponse
		want     *visionrpcv1.StreamResume // nil: the original request unchanged
	}{
		{name: "nothing received: the original request", want: nil},
		{
			name:     "a status only",
			received: []*visionrpcv1.StreamPredictionsResponse{statusMsg("s1", 1, started)},
			want:     &visionrpcv1.StreamResume{StreamId: "s1", AfterCursor: 1},
		},
		{
			name:     "frames: the last cursor and the next sequence number",
			received: []*visionrpcv1.StreamPredictionsResponse{statusMsg("s1", 1, started), frameMsg("s1", 2, 0, 0), frameMsg("s1", 3, 0, 4)},
			want:     &visionrpcv1.StreamResume{StreamId: "s1", AfterCursor: 3, NextSequenceNumbers: []uint64{5}},
		},
		{
			name:     "per source, a source not seen yet from 0",
			received: []*visionrpcv1.StreamPredictionsResponse{frameMsg("s1", 7, 2, 10), frameMsg("s1", 8, 0, 3)},
			want:     &visionrpcv1.StreamResume{StreamId: "s1", AfterCursor: 8, NextSequenceNumbers: []uint64{4, 0, 11}},
		},
		{
			name:     "a REPLAYED resume keeps the cursor (RESUMED has cursor 0)",
			received: []*visionrpcv1.StreamPredictionsResponse{frameMsg("s1", 5, 0, 3), statusMsg("s1", 0, resumed)},
			want:     &visionrpcv1.StreamResume{StreamId: "s1", AfterCursor: 5, NextSequenceNumbers: []uint64{4}},
		},
		{
			name:     "a RESTARTED resume: the new stream's cursors, the sources' sequence numbers",
			received: []*visionrpcv1.StreamPredictionsResponse{frameMsg("s1", 5, 0, 3), statusMsg("s2", 0, resumed)},
			want:     &visionrpcv1.StreamResume{StreamId: "s2", AfterCursor: 0, NextSequenceNumbers: []uint64{4}},
		},
		{
			name: "after a restart, cursors of the new stream",
			received: []*visionrpcv1.StreamPredictionsResponse{
				frameMsg("s1", 50, 0, 30), statusMsg("s2", 0, resumed), statusMsg("s2", 1, started), frameMsg("s2", 2, 0, 31),
			},
			want: &visionrpcv1.StreamResume{StreamId: "s2", AfterCursor: 2, NextSequenceNumbers: []uint64{32}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			original := &visionrpcv1.StreamPredictionsRequest{
				Sources:       []*visionrpcv1.VideoSource{PathSource("bikes.mp4")},
				StreamOptions: &visionrpcv1.StreamOptions{MaxFps: proto.Float32(25)},
			}
			pristine := proto.Clone(original)
			var p resumePoint
			for _, msg := range tc.received {
				p.observe(msg)
			}
			got := p.request(original)
			if !proto.Equal(original, pristine) {
				t.Errorf("the caller's request was changed: %v", original)
			}
			want := proto.CloneOf(original)
			want.Resume = tc.want
			if !proto.Equal(got, want) {
				t.Errorf("request\n%v\nwant\n%v", got, want)
			}
		})
	}
}
