package ecdsim

import (
	"crypto/sha256"
	"sync"
)

// maxNonces bounds the nonces remembered at once (about 50 bytes each).
// Past it the oldest are forgotten before their window ends: a simulator
// under a benchmark's load then keeps bounded memory and only loses replay
// detection for nonces older than the most recent maxNonces.
const maxNonces = 1 << 18

type nonceKey [16]byte

type nonceEntry struct {
	key     nonceKey
	expires int64 // Unix nanoseconds on the simulator clock
}

// nonceStore remembers the signature nonces of accepted requests until
// their window ends. It is safe for concurrent use.
type nonceStore struct {
	mu    sync.Mutex
	seen  map[nonceKey]int64 // key -> expires
	queue []nonceEntry       // insertion order; queue[head:] are live
	head  int
}

func newNonceStore() *nonceStore {
	return &nonceStore{seen: make(map[nonceKey]int64)}
}

// use records the nonce of accessKeyID at now (Unix nanoseconds) for
// window nanoseconds. It returns false when the nonce is still remembered
// from an earlier request.
func (s *nonceStore) use(accessKeyID, nonce string, now, window int64) bool {
	var buf [128]byte
	b := append(buf[:0], accessKeyID...)
	b = append(b, 0)
	b = append(b, nonce...)
	sum := sha256.Sum256(b)
	key := nonceKey(sum[:16])

	s.mu.Lock()
	defer s.mu.Unlock()
	for s.head < len(s.queue) {
		e := s.queue[s.head]
		if e.expires > now && len(s.queue)-s.head < maxNonces {
			break
		}
		if s.seen[e.key] == e.expires {
			delete(s.seen, e.key)
		}
		s.queue[s.head] = nonceEntry{}
		s.head++
	}
	if s.head > 1024 && s.head*2 >= len(s.queue) {
		n := copy(s.queue, s.queue[s.head:])
		clear(s.queue[n:])
		s.queue = s.queue[:n]
		s.head = 0
	}
	if exp, ok := s.seen[key]; ok && exp > now {
		return false
	}
	s.seen[key] = now + window
	s.queue = append(s.queue, nonceEntry{key: key, expires: now + window})
	return true
}

// len reports how many nonces are remembered.
func (s *nonceStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}
