package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	xdsserver "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The names the client's xds:///visionrpc target resolves through: listener -> route -> cluster -> endpoints.
const (
	serviceName = "visionrpc"
	routeName   = "visionrpc-route"
	clusterName = "visionrpc-cluster"
)

func runServer(args []string) error {
	flags := flag.NewFlagSet("server", flag.ContinueOnError)
	node := flags.String("node", "visionrpc-test", "the node id of the client's bootstrap")
	if err := flags.Parse(args); err != nil {
		return err
	}
	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, cache.IDHash{}, nil) // ADS: one stream carries every type
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(server, xdsserver.NewServer(ctx, snapshots, nil))
	go func() { _ = server.Serve(lis) }()
	fmt.Printf("listening %d\n", lis.Addr().(*net.TCPAddr).Port)

	lines := bufio.NewScanner(os.Stdin)
	for version := 1; lines.Scan(); version++ {
		addresses, ok := strings.CutPrefix(lines.Text(), "endpoints ")
		if !ok {
			return fmt.Errorf("expected \"endpoints HOST:PORT,...\", got %q", lines.Text())
		}
		snapshot, err := newSnapshot(strconv.Itoa(version), strings.Split(addresses, ","))
		if err != nil {
			return err
		}
		if err := snapshots.SetSnapshot(ctx, *node, snapshot); err != nil {
			return err
		}
		fmt.Printf("pushed %d\n", version)
	}
	server.Stop()
	return lines.Err()
}

func newSnapshot(version string, addresses []string) (*cache.Snapshot, error) {
	ads := &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
	routerConfig, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	manager, err := anypb.New(&hcm.HttpConnectionManager{
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: ads, RouteConfigName: routeName}},
		// grpc-go runs the HTTP filters it knows; the router must come last.
		HttpFilters: []*hcm.HttpFilter{{Name: "router", ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerConfig}}},
	})
	if err != nil {
		return nil, err
	}
	// A proxyless client reads an "API listener": no socket, just the route to take for this target.
	apiListener := &listener.Listener{Name: serviceName, ApiListener: &listener.ApiListener{ApiListener: manager}}
	routes := &route.RouteConfiguration{
		Name: routeName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    serviceName,
			Domains: []string{serviceName},
			Routes: []*route.Route{{
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: ""}},
				Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}},
			}},
		}},
	}
	replicas := &cluster.Cluster{
		Name:                 clusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	var lbEndpoints []*endpoint.LbEndpoint
	for _, address := range addresses {
		host, portText, err := net.SplitHostPort(strings.TrimSpace(address))
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseUint(portText, 10, 32)
		if err != nil {
			return nil, err
		}
		lbEndpoints = append(lbEndpoints, &endpoint.LbEndpoint{
			HealthStatus: core.HealthStatus_HEALTHY,
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: &core.Address{
				Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Protocol: core.SocketAddress_TCP, Address: host,
					PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
				}},
			}}},
		})
	}
	assignment := &endpoint.ClusterLoadAssignment{
		ClusterName: clusterName,
		Endpoints: []*endpoint.LocalityLbEndpoints{{
			Locality: &core.Locality{Region: "loopback"},
			// grpc-go ignores a locality without a weight.
			LoadBalancingWeight: wrapperspb.UInt32(1),
			LbEndpoints:         lbEndpoints,
		}},
	}
	snapshot, err := cache.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ListenerType: {apiListener},
		resource.RouteType:    {routes},
		resource.ClusterType:  {replicas},
		resource.EndpointType: {assignment},
	})
	// No snapshot.Consistent(): it looks for route names in socket listeners' filter chains only, and an API
	// listener has none, so it would call the route configuration unreferenced.
	return snapshot, err
}
