package visionrpc

import (
	"slices"
	"testing"
)

func TestListTarget(t *testing.T) {
	for _, tc := range []struct {
		target  string
		want    []string
		refused bool
	}{
		{target: "ipv4:127.0.0.1:5001", want: []string{"127.0.0.1:5001"}},
		{target: "ipv4:127.0.0.1:5001,10.0.0.2:5002", want: []string{"127.0.0.1:5001", "10.0.0.2:5002"}},
		{target: "ipv4:///127.0.0.1:5001,127.0.0.1:5002", want: []string{"127.0.0.1:5001", "127.0.0.1:5002"}},
		{target: "ipv4:127.0.0.1", want: []string{"127.0.0.1:443"}}, // gRPC's default port
		{target: "ipv6:[::1]:5001,[::1]:5002", want: []string{"[::1]:5001", "[::1]:5002"}},
		{target: "ipv6:::1", want: []string{"[::1]:443"}},
		{target: "ipv6:[fe80::1]", want: []string{"[fe80::1]:443"}},

		{target: "ipv4:", refused: true},
		{target: "ipv4:127.0.0.1:5001,", refused: true},
		{target: "ipv4:localhost:5001", refused: true},
		{target: "ipv4:[::1]:5001", refused: true},
		{target: "ipv6:127.0.0.1:5001", refused: true},
		{target: "ipv4:127.0.0.1:0", refused: true},
		{target: "ipv4:127.0.0.1:65536", refused: true},
		{target: "ipv4:127.0.0.1:http", refused: true},
		{target: "ipv4:127.0.0.1:-1", refused: true},

		// Not address lists: left to grpc-go.
		{target: "127.0.0.1:50051"},
		{target: "localhost:50051"},
		{target: "[::1]:50051"},
		{target: "dns:///svc:50051"},
		{target: "unix:///run/visionrpc.sock"},
		{target: "passthrough:///x"},
	} {
		got, err := listTarget(tc.target)
		if (err != nil) != tc.refused || !slices.Equal(got, tc.want) {
			t.Errorf("listTarget(%q) = %q, %v; want %q, refused %v", tc.target, got, err, tc.want, tc.refused)
		}
	}
}
