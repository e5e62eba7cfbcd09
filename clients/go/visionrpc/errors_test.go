package visionrpc_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/visionrpc/visionrpc/clients/go/visionrpc"
)

// richStatus is the kind of status the server sends: ErrorInfo on every error, BadRequest for
// INVALID_ARGUMENT, RetryInfo for RESOURCE_EXHAUSTED.
func richStatus(t *testing.T, code codes.Code, msg string) *status.Status {
	t.Helper()
	st, err := status.New(code, msg).WithDetails(
		&errdetails.ErrorInfo{Reason: "UNSUPPORTED_IMAGE_FORMAT", Domain: "visionrpc.dev", Metadata: map[string]string{"index": "0"}},
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "images[0].encoded", Description: "not a JPEG, PNG, BMP, WebP or GIF"},
			{Field: "", Description: "second"},
		}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestFromErrorDecodesRichDetails(t *testing.T) {
	st := richStatus(t, codes.InvalidArgument, "bad image")
	err := fmt.Errorf("wrapped: %w", visionrpc.FromError(st.Err()))

	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) {
		t.Fatalf("errors.As(%v, *Error) = false", err)
	}
	want := &visionrpc.Error{
		Code:     codes.InvalidArgument,
		Message:  "bad image",
		Reason:   "UNSUPPORTED_IMAGE_FORMAT",
		Domain:   "visionrpc.dev",
		Metadata: map[string]string{"index": "0"},
		FieldViolations: []visionrpc.FieldViolation{
			{Field: "images[0].encoded", Description: "not a JPEG, PNG, BMP, WebP or GIF"},
			{Field: "", Description: "second"},
		},
		RetryDelay: 1500 * time.Millisecond,
	}
	got := *rpcErr
	if got.Unwrap() != nil {
		t.Errorf("a status error has no cause, got %v", got.Unwrap())
	}
	if got.Code != want.Code || got.Message != want.Message || got.Reason != want.Reason || got.Domain != want.Domain ||
		!reflect.DeepEqual(got.Metadata, want.Metadata) || !reflect.DeepEqual(got.FieldViolations, want.FieldViolations) ||
		got.RetryDelay != want.RetryDelay {
		t.Errorf("decoded %#v\nwant %#v", got, want)
	}
	if rpcErr.Retryable() {
		t.Error("INVALID_ARGUMENT must not be retryable")
	}
	if c := status.Code(err); c != codes.InvalidArgument {
		t.Errorf("status.Code sees %v through the wrapper, want InvalidArgument", c)
	}
	if s, _ := status.FromError(rpcErr); len(s.Details()) != 3 {
		t.Errorf("GRPCStatus lost the details: %v", s.Details())
	}
	const text = "visionrpc: InvalidArgument: bad image [UNSUPPORTED_IMAGE_FORMAT] " +
		"(images[0].encoded: not a JPEG, PNG, BMP, WebP or GIF; <request>: second)"
	if rpcErr.Error() != text {
		t.Errorf("Error() = %q\nwant      %q", rpcErr.Error(), text)
	}
}

func TestFromErrorWithoutDetails(t *testing.T) {
	err := visionrpc.FromError(status.Error(codes.Unavailable, "draining"))
	var rpcErr *visionrpc.Error
	if !errors.As(err, &rpcErr) {
		t.Fatalf("not an *Error: %v", err)
	}
	if rpcErr.Code != codes.Unavailable || rpcErr.Reason != "" || rpcErr.FieldViolations != nil || rpcErr.RetryDelay != 0 ||
		rpcErr.Metadata != nil {
		t.Errorf("unexpected fields: %#v", rpcErr)
	}
	if !rpcErr.Retryable() {
		t.Error("UNAVAILABLE must be retryable")
	}
	if rpcErr.Error() != "visionrpc: Unavailable: draining" {
		t.Errorf("Error() = %q", rpcErr.Error())
	}
}

func TestFromErrorPassesNilAndErrorThrough(t *testing.T) {
	if visionrpc.FromError(nil) != nil {
		t.Error("FromError(nil) != nil")
	}
	first := visionrpc.FromError(status.Error(codes.NotFound, "x"))
	if again := visionrpc.FromError(first); again != first {
		t.Errorf("FromError(*Error) = %v, want the same error", again)
	}
}

func TestFromErrorNonStatusErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{errors.New("boom"), codes.Unknown},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("call: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
	} {
		err := visionrpc.FromError(tc.err)
		var rpcErr *visionrpc.Error
		if !errors.As(err, &rpcErr) || rpcErr.Code != tc.code {
			t.Errorf("FromError(%v) = %#v, want code %v", tc.err, err, tc.code)
			continue
		}
		if !errors.Is(err, tc.err) {
			t.Errorf("FromError(%v) lost its cause", tc.err)
		}
	}
}
