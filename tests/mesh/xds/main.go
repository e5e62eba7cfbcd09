// Command xds-mesh is the proxyless-gRPC half of the mesh tests (tests/mesh/test_xds.py): a real xDS
// management server built on envoyproxy/go-control-plane, and a grpc-go client that finds the replicas
// through it with an xds:/// target, as a service mesh's proxyless clients do.
//
//	xds-mesh server                 serves ADS on 127.0.0.1 (prints "listening PORT"); each stdin line
//	                                "endpoints HOST:PORT,HOST:PORT" pushes a new snapshot (prints "pushed N")
//	xds-mesh client -image FILE     calls Infer through xds:///visionrpc (GRPC_XDS_BOOTSTRAP names the
//	                                bootstrap) until stdin closes, one JSON line per call: the replica that
//	                                answered (the call's peer) and the status
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: xds-mesh server | client -image FILE")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = runServer(os.Args[2:])
	case "client":
		err = runClient(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "xds-mesh:", err)
		os.Exit(1)
	}
}
