package visionrpc

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// timerNotYetFired is a context whose deadline has passed but whose timer has not set Err yet: the window
// grpc-go can report DeadlineExceeded in (it compares the deadline with the clock). A real context cannot be
// held in that window on purpose, hence this stand-in.
type timerNotYetFired struct{ context.Context }

func (timerNotYetFired) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }
func (timerNotYetFired) Err() error                  { return nil }

func TestDeadlineExceededKeepsItsCauseBeforeTheContextTimerFires(t *testing.T) {
	cases := []struct {
		name      string
		ctx       context.Context
		code      codes.Code
		wantCause error
	}{
		{"deadline passed, timer not fired", timerNotYetFired{context.Background()}, codes.DeadlineExceeded, context.DeadlineExceeded},
		{"no deadline: the server's own", context.Background(), codes.DeadlineExceeded, nil},
		{"deadline passed, but a Canceled status", timerNotYetFired{context.Background()}, codes.Canceled, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := fromError(tc.ctx, status.Error(tc.code, "stream terminated by RST_STREAM with error code: CANCEL"))
			var rpcErr *Error
			if !errors.As(err, &rpcErr) || rpcErr.Code != tc.code {
				t.Fatalf("got %v, want an *Error with %v", err, tc.code)
			}
			if got := errors.Unwrap(err); got != tc.wantCause {
				t.Errorf("cause %v, want %v", got, tc.wantCause)
			}
		})
	}
}
