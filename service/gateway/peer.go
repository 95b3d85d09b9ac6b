package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Peer identities: what the per-peer limits count by and the logs name
// (--peer-identity).
const (
	// PeerRemoteIP is the connection's remote address (an IPv6 address
	// counts by its /64, which one host usually holds whole). Behind a
	// mesh sidecar every connection comes from the sidecar's address, so
	// every caller is one peer.
	PeerRemoteIP = "remote-ip"
	// PeerClientCert is the mTLS client certificate's identity: its first
	// URI SAN (a SPIFFE id), else its first DNS SAN, else its subject's
	// common name. It needs --client-ca.
	PeerClientCert = "client-cert"
	// PeerToken is the id of the caller's bearer token (its name in the
	// tokens file, or a short hash). It needs --auth-tokens-file.
	PeerToken = "token"
	// PeerHeaderPrefix, followed by a header name, takes the identity from
	// that request header, set by a proxy in --trusted-proxies (e.g.
	// header:x-forwarded-client-cert, whose URI= element is used). From any
	// other address the header is ignored and the remote address counts.
	PeerHeaderPrefix = "header:"
)

// maxPeerLength bounds an identity taken from a certificate or a header,
// so a caller cannot make the gateway keep long strings per peer.
const maxPeerLength = 256

// caller is who sent a request, as the gateway's limits and logs see it.
type caller struct {
	// peer is the identity the per-peer limits count by.
	peer string
	// remote is the connection's remote address.
	remote string
	// tokenID names the caller's bearer token; "" without token auth.
	tokenID string
}

type callerKey struct{}

func withCaller(ctx context.Context, c caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// callerFrom returns the caller of a request that passed the gateway's
// front layer; the zero caller otherwise.
func callerFrom(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// peerIdentity derives a request's peer.
type peerIdentity struct {
	mode    string // PeerRemoteIP, PeerClientCert, PeerToken, or PeerHeaderPrefix
	header  string // with PeerHeaderPrefix: the canonical header name
	trusted []netip.Prefix
}

// parsePeerIdentity parses a --peer-identity value.
func parsePeerIdentity(s string, trusted []netip.Prefix) (peerIdentity, error) {
	switch s {
	case PeerRemoteIP, PeerClientCert, PeerToken:
		return peerIdentity{mode: s, trusted: trusted}, nil
	}
	if name, ok := strings.CutPrefix(s, PeerHeaderPrefix); ok && name != "" && !strings.ContainsAny(name, " \t:") {
		return peerIdentity{mode: PeerHeaderPrefix, header: http.CanonicalHeaderKey(name), trusted: trusted}, nil
	}
	return peerIdentity{}, fmt.Errorf("--peer-identity %q is none of remote-ip, client-cert, token, header:<name>", s)
}

// String is the --peer-identity value.
func (p peerIdentity) String() string {
	if p.mode == PeerHeaderPrefix {
		return PeerHeaderPrefix + strings.ToLower(p.header)
	}
	return p.mode
}

// of returns the peer of r, whose bearer token (if any) has the id tokenID.
// A request that lacks what the mode needs counts by its remote address.
func (p peerIdentity) of(r *http.Request, tokenID string) string {
	switch p.mode {
	case PeerClientCert:
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			if id := certificateIdentity(r.TLS.PeerCertificates[0]); id != "" {
				return id
			}
		}
	case PeerToken:
		if tokenID != "" {
			return "token:" + tokenID
		}
	case PeerHeaderPrefix:
		if ip, ok := remoteIP(r.RemoteAddr); ok && p.trustedProxy(ip) {
			if id := headerIdentity(p.header, r.Header.Values(p.header)); id != "" {
				return id
			}
		}
	}
	return addressPeer(r.RemoteAddr)
}

// trustedProxy reports whether ip is one of --trusted-proxies.
func (p peerIdentity) trustedProxy(ip netip.Addr) bool {
	for _, pre := range p.trusted {
		if pre.Contains(ip) {
			return true
		}
	}
	return false
}

// certificateIdentity is a client certificate's first URI SAN (a SPIFFE
// id such as spiffe://cluster.local/ns/shop/sa/checkout), else its first
// DNS SAN, else its subject's common name.
func certificateIdentity(cert *x509.Certificate) string {
	switch {
	case len(cert.URIs) > 0:
		return bounded(cert.URIs[0].String())
	case len(cert.DNSNames) > 0:
		return bounded(cert.DNSNames[0])
	}
	return bounded(cert.Subject.CommonName)
}

// headerIdentity is the identity in the values of a forwarded identity
// header: for X-Forwarded-Client-Cert (Envoy, Istio) the URI= of the
// element the nearest proxy added, for X-Forwarded-For the address the
// nearest proxy saw, else the last value as it is.
func headerIdentity(name string, values []string) string {
	if len(values) == 0 {
		return ""
	}
	last := values[len(values)-1]
	switch name {
	case "X-Forwarded-Client-Cert":
		elems := strings.Split(last, ",")
		for field := range strings.SplitSeq(elems[len(elems)-1], ";") {
			if uri, ok := strings.CutPrefix(strings.TrimSpace(field), "URI="); ok {
				return bounded(strings.Trim(uri, `"`))
			}
		}
		return ""
	case "X-Forwarded-For":
		hops := strings.Split(last, ",")
		return bounded(strings.TrimSpace(hops[len(hops)-1]))
	}
	return bounded(strings.TrimSpace(last))
}

func bounded(s string) string {
	if len(s) > maxPeerLength {
		return s[:maxPeerLength]
	}
	return s
}

// remoteIP is the IP address of a host:port remote address.
func remoteIP(addr string) (netip.Addr, bool) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return netip.Addr{}, false
		}
		a, err := netip.ParseAddr(host)
		return a.Unmap(), err == nil
	}
	return ap.Addr().Unmap(), true
}

// addressPeer is the peer of a remote address: its IPv4 address, or the
// /64 of its IPv6 address.
func addressPeer(addr string) string {
	ip, ok := remoteIP(addr)
	if !ok {
		return addr
	}
	return ipPeer(ip)
}

func ipPeer(ip netip.Addr) string {
	if ip.Is4() {
		return ip.String()
	}
	p, _ := ip.Prefix(64)
	return p.String()
}
