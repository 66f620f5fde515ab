// Command waypointxds asks istiod, over its plaintext XDS port, for the listeners it hands one
// waypoint proxy, and prints them as JSON (protojson, every typed_config expanded).
//
// Role: test-rig tooling of mesh-auditor's waypoint translation oracle
// (tests/integration/test_waypoint_oracle.py); the auditor never runs it. It is built from the
// module pinned in tools/istio/go.mod, next to pilot-discovery and istioctl, by
// testrigs/devtools/istio.py.
//
// Input (flags): -addr host:port of istiod's plaintext XDS listener; -node a JSON object
// {"id": "waypoint~<pod IP>~<pod>.<ns>~<ns>.svc.cluster.local", "metadata": {...}}, the node istiod
// identifies the proxy by (pilot/pkg/model/context.go: node type "waypoint", the metadata labels
// gateway.istio.io/managed=istio.io-mesh-controller and the Gateway's name; istiod finds the
// waypoint's Services through the pod IP in the node id). Output on stdout:
// {"listeners": [<envoy.config.listener.v3.Listener as JSON>...]}. Exit 1 with a message on
// stderr when istiod cannot be reached or answers with an error within -timeout.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	// Registers every Envoy extension type istiod may put in a typed_config, so that
	// protojson can expand them (RBAC, HTTP connection manager, ...).
	_ "istio.io/istio/pkg/config/xds"
	// TypedStruct (istio's own filters, e.g. istio.metadata_exchange) is a udpa/xds type.
	_ "github.com/cncf/xds/go/udpa/type/v1"
	_ "github.com/cncf/xds/go/xds/type/v3"
)

const listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"

type nodeSpec struct {
	ID       string         `json:"id"`
	Metadata map[string]any `json:"metadata"`
}

func main() {
	addr := flag.String("addr", "", "istiod's plaintext XDS address, host:port")
	nodeJSON := flag.String("node", "", "the node: JSON {\"id\": ..., \"metadata\": {...}}")
	timeout := flag.Duration("timeout", 20*time.Second, "give up after this long")
	flag.Parse()
	if err := run(*addr, *nodeJSON, *timeout); err != nil {
		fmt.Fprintf(os.Stderr, "waypointxds: %v\n", err)
		os.Exit(1)
	}
}

func run(addr, nodeJSON string, timeout time.Duration) error {
	var spec nodeSpec
	if err := json.Unmarshal([]byte(nodeJSON), &spec); err != nil || spec.ID == "" {
		return fmt.Errorf("-node must be a JSON object with an id: %v", err)
	}
	metadata, err := structpb.NewStruct(spec.Metadata)
	if err != nil {
		return fmt.Errorf("-node metadata: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to %s: %v", addr, err)
	}
	defer conn.Close()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("opening the ADS stream to %s: %v", addr, err)
	}
	node := &core.Node{Id: spec.ID, Metadata: metadata}
	// A wildcard LDS request (no resource names): every listener istiod builds for this node.
	if err := stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: listenerType}); err != nil {
		return fmt.Errorf("sending the LDS request: %v", err)
	}
	for {
		response, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("waiting for the LDS response: %v", err)
		}
		if response.GetTypeUrl() != listenerType {
			continue
		}
		listeners := make([]json.RawMessage, 0, len(response.GetResources()))
		for _, resource := range response.GetResources() {
			raw, err := protojson.Marshal(resource)
			if err != nil {
				return fmt.Errorf("printing a listener: %v", err)
			}
			listeners = append(listeners, raw)
		}
		out, err := json.Marshal(map[string]any{"version": response.GetVersionInfo(), "listeners": listeners})
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(append(out, '\n'))
		return err
	}
}
