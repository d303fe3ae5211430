// Command gocp is an xDS management server built only from go-control-plane's own cache and
// server, used by switchboard-proxy's interop test (proxy/tests/go_control_plane.rs) to show
// that the proxy speaks standard xDS.
//
// It serves ADS, state of the world and incremental (delta) alike from the same cache, on
// 127.0.0.1:0 and prints "listening 127.0.0.1:PORT" on stdout once serving. The snapshot for -node-id holds:
//
//   - Listener "ingress" on 127.0.0.1:<-listener-port>: an HTTP connection manager with the
//     router filter, routes over RDS (ADS) as RouteConfiguration "ingress-routes";
//   - routes: prefix "/a" to svc-a; header "x-pick: b" to svc-b; prefix "/" split 50/50
//     between svc-a and svc-b;
//   - EDS (ADS) clusters svc-a and svc-b with load assignments at -backend-a and -backend-b.
//
// Each line on stdin picks a snapshot: "v2" sends everything under "/" (but "/a") to svc-b,
// "v1" restores the first one. The program exits when stdin closes. Requests, ACKs, NACKs
// and responses are logged to stderr, a NACK as "NACK <type url> <error message>" and an ACK
// as "ACK <type url> <snapshot version> ..." in both protocols (a delta ACK names its nonce
// only; the version is the one that nonce's response carried). Delta lines start with
// "DELTA " before that ("DELTA ACK ...", "DELTA NACK ..."), so a test can tell which
// protocol a client spoke.
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
	"sync"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const (
	listenerName = "ingress"
	routeName    = "ingress-routes"
	clusterA     = "svc-a"
	clusterB     = "svc-b"
)

func main() {
	listenerPort := flag.Int("listener-port", 0, "port of the proxy's listener \"ingress\" on 127.0.0.1")
	backendA := flag.String("backend-a", "", "host:port of svc-a's only endpoint")
	backendB := flag.String("backend-b", "", "host:port of svc-b's only endpoint")
	nodeID := flag.String("node-id", "", "node id the snapshot is served to")
	flag.Parse()
	if err := run(*listenerPort, *backendA, *backendB, *nodeID); err != nil {
		fmt.Fprintf(os.Stderr, "gocp: %v\n", err)
		os.Exit(1)
	}
}

func run(listenerPort int, backendA, backendB, nodeID string) error {
	if listenerPort <= 0 || listenerPort > 65535 {
		return fmt.Errorf("-listener-port must be a port number, got %d", listenerPort)
	}
	if nodeID == "" {
		return fmt.Errorf("-node-id is required")
	}
	a, err := parseHostPort(backendA)
	if err != nil {
		return fmt.Errorf("-backend-a: %w", err)
	}
	b, err := parseHostPort(backendB)
	if err != nil {
		return fmt.Errorf("-backend-b: %w", err)
	}

	logger := log.LoggerFuncs{
		InfoFunc:  func(f string, args ...interface{}) { logf("cache: "+f, args...) },
		WarnFunc:  func(f string, args ...interface{}) { logf("cache warning: "+f, args...) },
		ErrorFunc: func(f string, args ...interface{}) { logf("cache error: "+f, args...) },
	}
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, logger)
	set := func(version string) error {
		snap, err := snapshot(version, uint32(listenerPort), a, b)
		if err != nil {
			return err
		}
		if err := cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
			return fmt.Errorf("set snapshot %s: %w", version, err)
		}
		logf("SNAPSHOT %s for node %q", version, nodeID)
		return nil
	}
	if err := set("v1"); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := serverv3.NewServer(ctx, cache, callbacks())
	grpcServer := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(grpcServer, srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- grpcServer.Serve(lis) }()
	fmt.Fprintf(os.Stdout, "listening %s\n", lis.Addr().String())

	lines := make(chan string)
	go func() {
		scanner := bufio.NewScanner(os.Stdin)
		for scanner.Scan() {
			lines <- strings.TrimSpace(scanner.Text())
		}
		close(lines)
	}()
	for {
		select {
		case err := <-served:
			return fmt.Errorf("grpc server stopped: %w", err)
		case line, ok := <-lines:
			if !ok {
				logf("stdin closed; exiting")
				stopped := make(chan struct{})
				go func() { grpcServer.GracefulStop(); close(stopped) }()
				select {
				case <-stopped:
				case <-time.After(2 * time.Second):
					grpcServer.Stop()
				}
				return nil
			}
			switch line {
			case "":
			case "v1", "v2":
				if err := set(line); err != nil {
					return err
				}
			default:
				logf("unknown command %q (want v1 or v2)", line)
			}
		}
	}
}

func logf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func callbacks() serverv3.CallbackFuncs {
	// A delta ACK carries the nonce of what it acknowledges, not a version: remember each
	// response's system version by nonce to log ACKs the way state of the world does.
	var mu sync.Mutex
	deltaVersions := map[string]string{}
	return serverv3.CallbackFuncs{
		DeltaStreamOpenFunc: func(_ context.Context, id int64, typeURL string) error {
			logf("DELTA STREAM %d open %s", id, typeURL)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *core.Node) {
			logf("DELTA STREAM %d closed (node %q)", id, node.GetId())
		},
		StreamDeltaRequestFunc: func(_ int64, req *discovery.DeltaDiscoveryRequest) error {
			switch {
			case req.GetErrorDetail() != nil:
				logf("DELTA NACK %s %s", req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
				logf("NACK %s %s", req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
			case req.GetResponseNonce() != "":
				mu.Lock()
				version := deltaVersions[req.GetResponseNonce()]
				mu.Unlock()
				logf("DELTA ACK %s %s nonce=%s", req.GetTypeUrl(), version, req.GetResponseNonce())
				logf("ACK %s %s nonce=%s", req.GetTypeUrl(), version, req.GetResponseNonce())
			default:
				logf("DELTA REQUEST %s node=%q subscribe=%v unsubscribe=%v initial=%v", req.GetTypeUrl(),
					req.GetNode().GetId(), req.GetResourceNamesSubscribe(),
					req.GetResourceNamesUnsubscribe(), req.GetInitialResourceVersions())
			}
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			mu.Lock()
			deltaVersions[resp.GetNonce()] = resp.GetSystemVersionInfo()
			mu.Unlock()
			logf("DELTA RESPONSE %s %s nonce=%s resources=%d removed=%v", resp.GetTypeUrl(),
				resp.GetSystemVersionInfo(), resp.GetNonce(), len(resp.GetResources()),
				resp.GetRemovedResources())
		},
		StreamOpenFunc: func(_ context.Context, id int64, typeURL string) error {
			logf("STREAM %d open %s", id, typeURL)
			return nil
		},
		StreamClosedFunc: func(id int64, node *core.Node) {
			logf("STREAM %d closed (node %q)", id, node.GetId())
		},
		StreamRequestFunc: func(_ int64, req *discovery.DiscoveryRequest) error {
			switch {
			case req.GetErrorDetail() != nil:
				logf("NACK %s %s", req.GetTypeUrl(), req.GetErrorDetail().GetMessage())
			case req.GetResponseNonce() != "":
				logf("ACK %s %s nonce=%s names=%v", req.GetTypeUrl(), req.GetVersionInfo(),
					req.GetResponseNonce(), req.GetResourceNames())
			default:
				logf("REQUEST %s node=%q names=%v", req.GetTypeUrl(), req.GetNode().GetId(),
					req.GetResourceNames())
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			logf("RESPONSE %s %s nonce=%s resources=%d", resp.GetTypeUrl(), resp.GetVersionInfo(),
				resp.GetNonce(), len(resp.GetResources()))
		},
	}
}

type hostPort struct {
	host string
	port uint32
}

func parseHostPort(s string) (hostPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return hostPort{}, err
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return hostPort{}, fmt.Errorf("bad port %q", port)
	}
	return hostPort{host: host, port: uint32(p)}, nil
}

// snapshot builds one consistent snapshot; v2 differs from v1 only in the "/" route.
func snapshot(version string, listenerPort uint32, a, b hostPort) (*cachev3.Snapshot, error) {
	l, err := httpListener(listenerPort)
	if err != nil {
		return nil, err
	}
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ListenerType: {l},
		resource.RouteType:    {routes(version)},
		resource.ClusterType:  {edsCluster(clusterA), edsCluster(clusterB)},
		resource.EndpointType: {assignment(clusterA, a), assignment(clusterB, b)},
	})
	if err != nil {
		return nil, err
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("snapshot %s is inconsistent: %w", version, err)
	}
	return snap, nil
}

// adsSource says "over the same ADS stream", for RDS and EDS.
func adsSource() *core.ConfigSource {
	return &core.ConfigSource{
		ResourceApiVersion:    core.ApiVersion_V3,
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
	}
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Protocol:      core.SocketAddress_TCP,
		Address:       host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func httpListener(port uint32) (*listener.Listener, error) {
	routerConfig, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	manager, err := anypb.New(&hcm.HttpConnectionManager{
		StatPrefix: listenerName,
		CodecType:  hcm.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcm.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerConfig},
		}},
	})
	if err != nil {
		return nil, err
	}
	return &listener.Listener{
		Name:    listenerName,
		Address: socketAddress("127.0.0.1", port),
		FilterChains: []*listener.FilterChain{{
			Filters: []*listener.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: manager},
			}},
		}},
	}, nil
}

func toCluster(name string) *route.Route_Route {
	return &route.Route_Route{Route: &route.RouteAction{
		ClusterSpecifier: &route.RouteAction_Cluster{Cluster: name},
	}}
}

func routes(version string) *route.RouteConfiguration {
	// v1 splits "/" evenly between the clusters; v2 sends all of it to svc-b.
	root := &route.Route{
		Name:  "split",
		Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
		Action: &route.Route_Route{Route: &route.RouteAction{
			ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: &route.WeightedCluster{
				Clusters: []*route.WeightedCluster_ClusterWeight{
					{Name: clusterA, Weight: wrapperspb.UInt32(50)},
					{Name: clusterB, Weight: wrapperspb.UInt32(50)},
				},
			}},
		}},
	}
	if version == "v2" {
		root = &route.Route{
			Name:   "all-b",
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: toCluster(clusterB),
		}
	}
	return &route.RouteConfiguration{
		Name: routeName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    listenerName,
			Domains: []string{"*"},
			Routes: []*route.Route{
				{
					Name:   "a",
					Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/a"}},
					Action: toCluster(clusterA),
				},
				{
					Name: "pick-b",
					Match: &route.RouteMatch{
						PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"},
						Headers: []*route.HeaderMatcher{{
							Name: "x-pick",
							HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: &matcher.StringMatcher{
								MatchPattern: &matcher.StringMatcher_Exact{Exact: "b"},
							}},
						}},
					},
					Action: toCluster(clusterB),
				},
				root,
			},
		}},
	}
}

func edsCluster(name string) *cluster.Cluster {
	return &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig: &cluster.Cluster_EdsClusterConfig{
			EdsConfig:   adsSource(),
			ServiceName: name,
		},
		ConnectTimeout: durationpb.New(2 * time.Second),
		LbPolicy:       cluster.Cluster_ROUND_ROBIN,
	}
}

func assignment(name string, backend hostPort) *endpoint.ClusterLoadAssignment {
	return &endpoint.ClusterLoadAssignment{
		ClusterName: name,
		Endpoints: []*endpoint.LocalityLbEndpoints{{
			LbEndpoints: []*endpoint.LbEndpoint{{
				HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
					Address: socketAddress(backend.host, backend.port),
				}},
				HealthStatus:        core.HealthStatus_HEALTHY,
				LoadBalancingWeight: wrapperspb.UInt32(1),
			}},
		}},
	}
}
