package visionrpc

import (
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	visionrpcv1 "github.com/visionrpc/visionrpc/clients/go/gen/visionrpc/v1"
)

// How a broken stream is resumed (docs/stream-resume.md): the same schedule in every SDK.
const (
	// DefaultStreamResumeAttempts is how many calls in a row a stream re-issues without receiving a message
	// before it gives up and returns the last error (WithStreamResumeAttempts changes it).
	DefaultStreamResumeAttempts = 8

	resumeBackoffInitial = 50 * time.Millisecond
	resumeBackoffMax     = 2 * time.Second
	resumeBackoffJitter  = 0.2 // +-20%, so clients cut by the same drain do not come back in step
)

// ResumeGap is what the last resume of a stream cost: the server's account of it (the RESUMED status's
// visionrpcv1.ResumeGap) and the downtime the client measured.
type ResumeGap struct {
	// Outcome: REPLAYED (nothing lost), PARTIAL (MessagesLost lost) or RESTARTED (a new stream id; results
	// between the break and the new STARTED are lost).
	Outcome visionrpcv1.ResumeOutcome
	// PreviousStreamID is the stream that was resumed (the new messages' stream id differs when RESTARTED).
	PreviousStreamID string
	// MessagesLost is, when PARTIAL, how many messages after the last cursor could not be replayed.
	MessagesLost uint64
	// Downtime runs from the break (the error of the broken call) to the first message of the call that
	// resumed it, backoff and failed attempts included.
	Downtime time.Duration
}

// resumeBackoff is the wait before re-issue number attempt (from 0) of a broken stream: 50 ms doubling up to
// 2 s, scaled by 1 +- 20% with random in [0, 1).
func resumeBackoff(attempt int, random float64) time.Duration {
	d := resumeBackoffInitial
	for i := 0; i < attempt && d < resumeBackoffMax; i++ {
		d *= 2
	}
	d = min(d, resumeBackoffMax)
	return time.Duration(float64(d) * (1 - resumeBackoffJitter + 2*resumeBackoffJitter*random))
}

// resumePoint is where a broken stream picks up: what the caller has received so far.
type resumePoint struct {
	streamID string
	// cursor is the last non-zero cursor of streamID (0: none yet).
	cursor uint64
	// nextSequence is, by source index, the last frame's sequence number + 1 (0: no frame yet).
	nextSequence []uint64
}

// observe records a message the caller receives.
func (p *resumePoint) observe(msg *visionrpcv1.StreamPredictionsResponse) {
	if id := msg.GetStreamId(); id != "" && id != p.streamID {
		// The first message, or a RESTARTED resume: cursors belong to a stream id and count from 1 in the new
		// one, so the old stream's cursor would skip the new stream's first messages. Sequence numbers belong
		// to the sources and carry over.
		p.streamID, p.cursor = id, 0
	}
	if c := msg.GetCursor(); c != 0 { // a RESUMED status has cursor 0: it is no position in the stream
		p.cursor = c
	}
	if frame := msg.GetFrame(); frame != nil {
		i := int(frame.GetSourceIndex())
		if i >= len(p.nextSequence) {
			p.nextSequence = append(p.nextSequence, make([]uint64, i+1-len(p.nextSequence))...)
		}
		p.nextSequence[i] = frame.GetSequenceNumber() + 1
	}
}

// request is the request that continues the stream: the original one with resume set, or the original one
// unchanged while nothing has arrived (there is nothing to resume yet).
func (p *resumePoint) request(original *visionrpcv1.StreamPredictionsRequest) *visionrpcv1.StreamPredictionsRequest {
	if p.streamID == "" {
		return original
	}
	req := proto.CloneOf(original)
	req.Resume = &visionrpcv1.StreamResume{
		StreamId:            p.streamID,
		AfterCursor:         p.cursor,
		NextSequenceNumbers: slices.Clone(p.nextSequence),
	}
	return req
}
