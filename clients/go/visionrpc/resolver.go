package visionrpc

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
)

// gRPC's naming syntax (https://github.com/grpc/grpc/blob/master/doc/naming.md) has static address lists,
// "ipv4:10.0.0.1:50051,10.0.0.2:50051" and "ipv6:[::1]:50051,[::1]:50052", which grpc-go does not resolve.
// The client resolves them itself, through grpc.WithResolvers on its own channel only: a global
// resolver.Register would change every other grpc-go channel of the program.
//
// The channel's load balancing stays gRPC's default, pick_first: one server serves until its connection goes
// away, then the next one that answers does. That is what a resumed stream needs after a drain.

// defaultListPort is the port of a list entry that names none, as gRPC's naming syntax says.
const defaultListPort = "443"

// addressListSchemes are the target schemes the client resolves to a static address list.
var addressListSchemes = []string{"ipv4", "ipv6"}

// addressListBuilder builds the static resolver of one scheme of addressListSchemes.
type addressListBuilder struct{ scheme string }

func (b addressListBuilder) Scheme() string { return b.scheme }

func (b addressListBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	addresses, err := parseAddressList(b.scheme, target.Endpoint())
	if err != nil {
		return nil, err
	}
	state := resolver.State{Addresses: make([]resolver.Address, len(addresses))}
	for i, a := range addresses {
		state.Addresses[i] = resolver.Address{Addr: a}
	}
	if err := cc.UpdateState(state); err != nil {
		return nil, err
	}
	return staticResolver{}, nil
}

// OverrideAuthority makes the first address the channel's authority: the default would be the whole
// comma-separated list, which is no valid :authority.
func (b addressListBuilder) OverrideAuthority(target resolver.Target) string {
	addresses, err := parseAddressList(b.scheme, target.Endpoint())
	if err != nil || len(addresses) == 0 {
		return "localhost"
	}
	return addresses[0]
}

// staticResolver has nothing to re-resolve: the addresses are the target itself.
type staticResolver struct{}

func (staticResolver) ResolveNow(resolver.ResolveNowOptions) {}
func (staticResolver) Close()                                {}

// addressListResolvers are the dial options that resolve the schemes of addressListSchemes, except a scheme
// the program registered a resolver for itself (resolver.Register): that one wins.
func addressListResolvers() []grpc.DialOption {
	var builders []resolver.Builder
	for _, scheme := range addressListSchemes {
		if resolver.Get(scheme) == nil {
			builders = append(builders, addressListBuilder{scheme: scheme})
		}
	}
	if len(builders) == 0 {
		return nil
	}
	return []grpc.DialOption{grpc.WithResolvers(builders...)}
}

// listTarget reads the addresses of an ipv4: or ipv6: target; other targets give none and no error (grpc-go
// resolves them). Dial calls it to refuse a malformed list where the mistake is made: grpc-go builds resolvers
// lazily and would only report it at the first call.
func listTarget(target string) ([]string, error) {
	u, err := url.Parse(target)
	if err != nil || !slices.Contains(addressListSchemes, u.Scheme) {
		return nil, nil // e.g. "127.0.0.1:50051", which is no URL: grpc-go takes it as host:port
	}
	return parseAddressList(u.Scheme, resolver.Target{URL: *u}.Endpoint())
}

// parseAddressList reads the endpoint of an ipv4: or ipv6: target, "a[:port],b[:port],...", into
// "host:port" addresses; ipv6 hosts are in brackets when a port follows ("[::1]:50051").
func parseAddressList(scheme, endpoint string) ([]string, error) {
	if endpoint == "" {
		return nil, fmt.Errorf("visionrpc: %s target: expected a comma-separated list of addresses, got none", scheme)
	}
	var addresses []string
	for entry := range strings.SplitSeq(endpoint, ",") {
		address, err := parseListEntry(scheme, entry)
		if err != nil {
			return nil, fmt.Errorf("visionrpc: %s target %q: %w", scheme, endpoint, err)
		}
		addresses = append(addresses, address)
	}
	return addresses, nil
}

func parseListEntry(scheme, entry string) (string, error) {
	host, port := entry, defaultListPort
	if h, p, err := net.SplitHostPort(entry); err == nil {
		host, port = h, p
	} else if strings.HasPrefix(entry, "[") && strings.HasSuffix(entry, "]") {
		host = entry[1 : len(entry)-1] // "[::1]" without a port
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return "", fmt.Errorf("expected an IP address, got %q", entry)
	case scheme == "ipv4" && (ip.To4() == nil || strings.Contains(host, ":")):
		return "", fmt.Errorf("expected an IPv4 address, got %q", entry)
	case scheme == "ipv6" && !strings.Contains(host, ":"):
		return "", fmt.Errorf("expected an IPv6 address, got %q", entry)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("expected a port in 1-65535, got %q in %q", port, entry)
	}
	return net.JoinHostPort(host, port), nil
}
