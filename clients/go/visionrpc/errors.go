package visionrpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FieldViolation is one bad request field, named by its path in the request (e.g. "images[2].raw.width").
type FieldViolation struct {
	Field       string
	Description string
}

// Error is every failed RPC of a Client: the gRPC status with the server's rich details decoded.
//
// The details come from the google.rpc.Status the server sends (the grpc-status-details-bin trailer):
// ErrorInfo gives Reason, Domain and Metadata, BadRequest gives FieldViolations, RetryInfo gives RetryDelay.
// Use errors.As to get at it; status.Code and status.FromError work on it too (it implements GRPCStatus):
//
//	var rpcErr *visionrpc.Error
//	if errors.As(err, &rpcErr) && rpcErr.Code == codes.InvalidArgument {
//		fmt.Println(rpcErr.Reason, rpcErr.FieldViolations)
//	}
//
// A call ended by its context keeps the context's error as its cause, so errors.Is(err, context.Canceled)
// and errors.Is(err, context.DeadlineExceeded) hold as well.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Message is the status message.
	Message string
	// Reason is google.rpc.ErrorInfo.reason, an UPPER_SNAKE machine-readable cause ("" when absent).
	Reason string
	// Domain is google.rpc.ErrorInfo.domain, e.g. "visionrpc.dev" ("" when absent).
	Domain string
	// Metadata is google.rpc.ErrorInfo.metadata (nil when absent).
	Metadata map[string]string
	// FieldViolations are google.rpc.BadRequest's field violations, in server order.
	FieldViolations []FieldViolation
	// RetryDelay is google.rpc.RetryInfo.retry_delay; 0 when the server sent no RetryInfo.
	RetryDelay time.Duration

	status *status.Status
	cause  error
}

// Error formats the code, message, reason and field violations, e.g.
// "visionrpc: InvalidArgument: bad image [UNSUPPORTED_IMAGE_FORMAT] (images[0].encoded: not an image)".
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("visionrpc: ")
	b.WriteString(e.Code.String())
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, " [%s]", e.Reason)
	}
	for i, v := range e.FieldViolations {
		sep := "; "
		if i == 0 {
			sep = " ("
		}
		field := v.Field
		if field == "" {
			field = "<request>"
		}
		fmt.Fprintf(&b, "%s%s: %s", sep, field, v.Description)
	}
	if len(e.FieldViolations) > 0 {
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the context error that ended the call (context.Canceled, context.DeadlineExceeded), if any.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus returns the status the error was decoded from, so status.Code(err) and status.FromError(err)
// see through it.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// Retryable reports whether the call is safe to retry blindly: only UNAVAILABLE (unreachable, warming up,
// draining), as the visionrpc contract says. RESOURCE_EXHAUSTED may be retried after RetryDelay.
func (e *Error) Retryable() bool { return e.Code == codes.Unavailable }

// FromError converts an error returned by a gRPC call (for instance of the generated stubs) into an *Error
// with the rich details decoded. nil stays nil; an *Error is returned as is; an error that carries no gRPC
// status becomes codes.Unknown with the error as its cause, except context errors, which become Canceled or
// DeadlineExceeded.
func FromError(err error) error {
	return fromError(context.Background(), err)
}

// fromError is FromError knowing the call's context: when that context is done, its error becomes the cause,
// whatever gRPC made of it (a cancelled stream ends with a Canceled status that carries no Go error chain).
func fromError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	st, ok := status.FromError(err)
	if !ok {
		// Not a gRPC status: keep the error as the cause of an Unknown (status.FromError gave Unknown too).
		code := status.FromContextError(err).Code()
		if code == codes.Unknown {
			return &Error{Code: codes.Unknown, Message: err.Error(), status: st, cause: err}
		}
		st = status.New(code, err.Error())
	}
	out := decodeStatus(st)
	ctxErr := ctx.Err()
	if ctxErr == nil && st.Code() == codes.DeadlineExceeded {
		// grpc-go decides "deadline exceeded" by comparing the deadline with the clock, which can happen just
		// before the context's own timer fires and sets ctx.Err(): the deadline has passed all the same.
		if deadline, ok := ctx.Deadline(); ok && !time.Now().Before(deadline) {
			ctxErr = context.DeadlineExceeded
		}
	}
	if ctxErr != nil && (st.Code() == codes.Canceled || st.Code() == codes.DeadlineExceeded) {
		out.cause = ctxErr
	} else if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		out.cause = err
	}
	return out
}

// decodeStatus reads the google.rpc error details of a status. Details of unknown types are ignored.
func decodeStatus(st *status.Status) *Error {
	out := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			out.Reason, out.Domain = d.GetReason(), d.GetDomain()
			if len(d.GetMetadata()) > 0 {
				out.Metadata = make(map[string]string, len(d.GetMetadata()))
				for k, v := range d.GetMetadata() {
					out.Metadata[k] = v
				}
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				out.FieldViolations = append(out.FieldViolations, FieldViolation{
					Field:       v.GetField(),
					Description: v.GetDescription(),
				})
			}
		case *errdetails.RetryInfo:
			out.RetryDelay = d.GetRetryDelay().AsDuration()
		}
	}
	return out
}
