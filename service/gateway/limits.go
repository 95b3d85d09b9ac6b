package gateway

import (
	"container/list"
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// connLimiter is the gateway's listener: it bounds the open connections in
// all (Config.MaxConnections) and per remote address
// (Config.MaxConnectionsPerPeer; an IPv6 address counts by its /64, and
// trusted proxies are exempt), so that a flood of connections meets a
// clear refusal instead of taking every file descriptor.
//
// At the global cap, a new connection closes an idle connection (no
// request in progress, no HTTP/2 stream open, or no request yet) of the
// peer that holds the most connections, the one idle longest, to make
// room, if that peer holds more than the newcomer's peer would: idle
// connections cannot lock out a caller with few connections, a flood
// evicts its own connections, not a quiet caller's, and peers of equal
// size are refused rather than churned through. Otherwise (every
// connection busy, or the newcomer's peer among the biggest) the new
// connection is refused. A refused connection gets a short HTTP/1.1 503 (cleartext)
// or is closed (TLS), and the refusal is counted and logged (rate-limited).
type connLimiter struct {
	net.Listener
	max, perPeer int
	trusted      []netip.Prefix
	tls          bool
	refusals     *refusalLog

	mu    sync.Mutex
	open  int
	peers map[string]*peerConns

	closeOnce sync.Once
	closed    chan struct{} // closed with the listener: ends reclaimWhenQuiet
}

// peerConns are the connections of one peer.
type peerConns struct {
	open int
	idle list.List // of *limitedConn, the longest idle first
}

// limitedConn is a connection the limiter admitted.
type limitedConn struct {
	net.Conn
	l        *connLimiter
	peer     string
	exempt   bool
	idleAt   *list.Element // in its peer's idle list while idle; nil while busy
	released bool          // its place is given back (closed or evicted)
}

func newConnLimiter(ln net.Listener, cfg Config, refusals *refusalLog) *connLimiter {
	return &connLimiter{
		Listener: ln,
		max:      cfg.MaxConnections,
		perPeer:  cfg.MaxConnectionsPerPeer,
		trusted:  cfg.TrustedProxies,
		tls:      cfg.TLSCert != "",
		refusals: refusals,
		peers:    map[string]*peerConns{},
		closed:   make(chan struct{}),
	}
}

// Close closes the listener.
func (l *connLimiter) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// Accept returns the next connection within the limits, refusing those
// beyond them.
func (l *connLimiter) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		lc, evicted, reason := l.admit(c)
		if evicted != nil {
			l.refusals.record(context.Background(), reasonIdleEvicted, evicted.peer, evicted.RemoteAddr().String())
			_ = evicted.Conn.Close()
		}
		if lc != nil {
			return lc, nil
		}
		peer := addressPeer(c.RemoteAddr().String())
		l.refusals.record(context.Background(), reason, peer, c.RemoteAddr().String())
		l.refuse(c, reason)
	}
}

// admit takes c into the limits, or says why not; evicted, when not nil,
// is an idle connection that gave its place to c and must be closed.
func (l *connLimiter) admit(c net.Conn) (lc *limitedConn, evicted *limitedConn, reason string) {
	ip, ok := remoteIP(c.RemoteAddr().String())
	peer := c.RemoteAddr().String()
	if ok {
		peer = ipPeer(ip)
	}
	exempt := ok && l.trustedProxy(ip)
	l.mu.Lock()
	defer l.mu.Unlock()
	pc := l.peers[peer]
	if pc == nil {
		pc = &peerConns{}
		l.peers[peer] = pc
	}
	if !exempt && pc.open >= l.perPeer {
		l.forgetIfEmptyLocked(peer, pc)
		return nil, nil, reasonConnectionsPerPeer
	}
	if l.open >= l.max {
		if evicted = l.evictableLocked(pc.open + 1); evicted == nil {
			l.forgetIfEmptyLocked(peer, pc)
			return nil, nil, reasonConnections
		}
		l.releaseLocked(evicted)
	}
	lc = &limitedConn{Conn: c, l: l, peer: peer, exempt: exempt}
	l.open++
	pc.open++
	lc.idleAt = pc.idle.PushBack(lc) // nothing requested yet
	return lc, evicted, ""
}

// evictableLocked is the connection to close to make room for a peer
// that would then hold n connections: the longest idle of the peer with
// the most connections that has an idle one, if that peer holds more than
// n. A peer never evicts its equals, so a flood from peers of the same
// size is refused rather than churned.
func (l *connLimiter) evictableLocked(n int) *limitedConn {
	var most *peerConns
	for _, pc := range l.peers {
		if pc.idle.Len() > 0 && (most == nil || pc.open > most.open) {
			most = pc
		}
	}
	if most == nil || most.open <= n {
		return nil
	}
	return most.idle.Front().Value.(*limitedConn)
}

func (l *connLimiter) forgetIfEmptyLocked(peer string, pc *peerConns) {
	if pc.open == 0 {
		delete(l.peers, peer)
	}
}

func (l *connLimiter) trustedProxy(ip netip.Addr) bool {
	for _, p := range l.trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// releaseLocked gives c's place back, once.
func (l *connLimiter) releaseLocked(c *limitedConn) {
	if c.released {
		return
	}
	c.released = true
	pc := l.peers[c.peer]
	if c.idleAt != nil {
		pc.idle.Remove(c.idleAt)
		c.idleAt = nil
	}
	l.open--
	pc.open--
	l.forgetIfEmptyLocked(c.peer, pc)
}

// refusalBody is what a refused cleartext connection reads.
const refusalBody = "the gateway has too many connections (from you, or in all); retry later or reuse a connection\n"

// refuse tells a refused connection why, as far as it can without reading
// from it, and closes it.
func (l *connLimiter) refuse(c net.Conn, reason string) {
	if !l.tls {
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = c.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n" +
			"X-Refused: " + reason + "\r\nContent-Length: " + strconv.Itoa(len(refusalBody)) + "\r\n\r\n" + refusalBody))
	}
	_ = c.Close()
}

// Close gives the connection's place back and closes it.
func (c *limitedConn) Close() error {
	c.l.mu.Lock()
	c.l.releaseLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// connState is the server's ConnState hook: it keeps the list of idle
// connections that a new connection may evict at the global cap.
func (l *connLimiter) connState(nc net.Conn, state http.ConnState) {
	c := limitedOf(nc)
	if c == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.released {
		return
	}
	pc := l.peers[c.peer]
	switch state {
	case http.StateActive:
		if c.idleAt != nil {
			pc.idle.Remove(c.idleAt)
			c.idleAt = nil
		}
	case http.StateNew, http.StateIdle:
		if c.idleAt == nil {
			c.idleAt = pc.idle.PushBack(c)
		}
	case http.StateHijacked, http.StateClosed:
		l.releaseLocked(c)
	}
}

// limitedOf is the admitted connection under nc (which TLS may wrap).
func limitedOf(nc net.Conn) *limitedConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*limitedConn)
	return c
}
