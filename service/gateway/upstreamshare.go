package gateway

import (
	"context"
	"fmt"
	"sync"

	"github.com/imagerecords/imagerecords/upstream"
)

// upstreamShare lets each peer have at most a share of upstream calls
// under way at once: waiting for the shared rate limit, or in flight. The
// rate limit serves waiting calls in the order they came, so without it a
// caller that opens a thousand streams (each fetching its first page and
// one more) would queue ten seconds of the whole budget ahead of everyone
// else; with it, another peer's call waits behind at most one share per
// busy peer. The share is Config.UpstreamBurst: as many calls as the limit
// lets go at once, enough for one peer to use the whole rate at any
// upstream latency below burst/rate (200 ms at the defaults).
type upstreamShare struct {
	api   upstream.API
	share int

	mu    sync.Mutex
	peers map[string]*peerShare
}

type peerShare struct {
	slots chan struct{}
	users int // calls holding or waiting for a slot
}

func newUpstreamShare(api upstream.API, share int) *upstreamShare {
	return &upstreamShare{api: api, share: max(share, 1), peers: map[string]*peerShare{}}
}

// DescribeImageModifiedRecords waits for a slot of the caller's share,
// then calls the upstream.
func (u *upstreamShare) DescribeImageModifiedRecords(ctx context.Context, in upstream.DescribeInput) (*upstream.Page, error) {
	peer := callerFrom(ctx).peer
	ps := u.join(peer)
	defer u.leave(peer, ps)
	select {
	case ps.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for this caller's share of the upstream rate limit: %w", context.Cause(ctx))
	}
	defer func() { <-ps.slots }()
	return u.api.DescribeImageModifiedRecords(ctx, in)
}

func (u *upstreamShare) join(peer string) *peerShare {
	u.mu.Lock()
	defer u.mu.Unlock()
	ps := u.peers[peer]
	if ps == nil {
		ps = &peerShare{slots: make(chan struct{}, u.share)}
		u.peers[peer] = ps
	}
	ps.users++
	return ps
}

func (u *upstreamShare) leave(peer string, ps *peerShare) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if ps.users--; ps.users == 0 {
		delete(u.peers, peer)
	}
}
