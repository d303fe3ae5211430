// Command gocp-loadtest is go-control-plane's ADS server (its snapshot cache and SotW
// server, nothing else) for xds-convergence's side-by-side run: the load generator hands it
// the resources switchboard served for each round and measures from that hand-over to each
// stream's ACK.
//
// It listens on two loopback ports and prints "xds 127.0.0.1:P" and "control 127.0.0.1:Q" on
// stdout once serving:
//
//   - xds: ADS (state of the world) from cache.NewSnapshotCache. Every node shares
//     one snapshot (the node hash is constant), as every node of a switchboard mesh shares the
//     mesh's snapshot.
//   - control: POST /snapshot with a serialized envoy.service.discovery.v3.DiscoveryResponse
//     whose resources are the whole configuration (any mix of types). Each type's version is
//     a hash of its resources, so only the types that changed are sent again, as switchboard
//     does. It answers 204 once SetSnapshot has returned (the watches are answered).
//
// The program exits when stdin closes. GOCP_LOADTEST_LOG=1 logs the cache's work to stderr.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	// The resource types a hand-over holds, registered for anypb.UnmarshalNew.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// snapshotKey is the one cache key every node maps to.
const snapshotKey = "mesh"

// oneSnapshot maps every node to snapshotKey.
type oneSnapshot struct{}

func (oneSnapshot) ID(*core.Node) string { return snapshotKey }

// maxBody bounds a hand-over (the whole configuration of a mesh).
const maxBody = 256 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "gocp-loadtest: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	var logger log.Logger
	if os.Getenv("GOCP_LOADTEST_LOG") != "" {
		logger = log.LoggerFuncs{
			DebugFunc: func(f string, args ...interface{}) { fmt.Fprintf(os.Stderr, f+"\n", args...) },
			InfoFunc:  func(f string, args ...interface{}) { fmt.Fprintf(os.Stderr, f+"\n", args...) },
			WarnFunc:  func(f string, args ...interface{}) { fmt.Fprintf(os.Stderr, f+"\n", args...) },
			ErrorFunc: func(f string, args ...interface{}) { fmt.Fprintf(os.Stderr, f+"\n", args...) },
		}
	}
	// ads=false although served over ADS: in ADS mode the cache answers a Listener or Cluster
	// request only once it names every listener or cluster of the snapshot, which a client
	// subscribing to the names it needs (as gRPC's does) never does.
	cache := cachev3.NewSnapshotCache(false, oneSnapshot{}, logger)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := serverv3.NewServer(ctx, cache, nil)
	grpcServer := grpc.NewServer(grpc.MaxConcurrentStreams(1 << 20))
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, srv)
	xdsLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	ctlLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /snapshot", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
		if err != nil {
			http.Error(w, "reading the body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if len(body) > maxBody {
			http.Error(w, "body over 256 MiB", http.StatusRequestEntityTooLarge)
			return
		}
		snap, err := decode(body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := cache.SetSnapshot(r.Context(), snapshotKey, snap); err != nil {
			http.Error(w, "set snapshot: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	served := make(chan error, 2)
	go func() { served <- grpcServer.Serve(xdsLis) }()
	go func() { served <- http.Serve(ctlLis, mux) }()
	fmt.Printf("xds %s\ncontrol %s\n", xdsLis.Addr(), ctlLis.Addr())

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, bufio.NewReader(os.Stdin))
		close(stdinClosed)
	}()
	select {
	case err := <-served:
		return fmt.Errorf("a server stopped: %w", err)
	case <-stdinClosed:
		grpcServer.Stop()
		return nil
	}
}

// decode turns a DiscoveryResponse holding the whole configuration into a snapshot, each
// type versioned by a hash of its resources' bytes (in name order).
func decode(body []byte) (*cachev3.Snapshot, error) {
	var all discovery.DiscoveryResponse
	if err := proto.Unmarshal(body, &all); err != nil {
		return nil, fmt.Errorf("not a DiscoveryResponse: %w", err)
	}
	type named struct {
		name  string
		raw   []byte
		value types.Resource
	}
	byType := map[string][]named{}
	for i, any := range all.GetResources() {
		msg, err := anypb.UnmarshalNew(any, proto.UnmarshalOptions{})
		if err != nil {
			return nil, fmt.Errorf("resource %d (%s): %w", i, any.GetTypeUrl(), err)
		}
		res, ok := msg.(types.Resource)
		if !ok {
			return nil, fmt.Errorf("resource %d: %s is not an xDS resource", i, any.GetTypeUrl())
		}
		byType[any.GetTypeUrl()] = append(byType[any.GetTypeUrl()], named{cachev3.GetResourceName(res), any.GetValue(), res})
	}
	snap := &cachev3.Snapshot{}
	for typeURL, items := range byType {
		t := cachev3.GetResponseType(typeURL)
		if t == types.UnknownType {
			return nil, fmt.Errorf("type %s is not served by the snapshot cache", typeURL)
		}
		sort.Slice(items, func(a, b int) bool { return items[a].name < items[b].name })
		h := sha256.New()
		resources := make([]types.Resource, 0, len(items))
		for _, it := range items {
			fmt.Fprintf(h, "%d:%s:%d:", len(it.name), it.name, len(it.raw))
			h.Write(it.raw)
			resources = append(resources, it.value)
		}
		snap.Resources[t] = cachev3.NewResources(hex.EncodeToString(h.Sum(nil))[:16], resources)
	}
	return snap, nil
}
