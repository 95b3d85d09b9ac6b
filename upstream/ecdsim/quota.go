package ecdsim

import (
	"fmt"
	"math"
	"strconv"
	"sync"
	"time"
)

// Quota is the account's flow control: a token bucket shared by every
// client of one simulator, whatever their access key. Each authenticated
// request of the action takes a token; without one it is answered 400
// Throttling.User, like an injected throttle. The bucket refills on the
// simulator clock ([Config.Now]).
type Quota struct {
	// QPS is the refill rate in calls per second; 0 means no quota.
	QPS float64
	// Burst is the bucket's size, the calls admitted at once after a
	// quiet spell; 0 means one second's worth, ceil(QPS), at least 1.
	Burst int
	// Hint adds the header x-ratelimit-user-api to quota throttles, e.g.
	// "Limit:10,Remain:0,TimeLeft:250", where TimeLeft is how long, in
	// milliseconds rounded up, until the bucket holds a token again and
	// Limit is the bucket size. The official SDKs read TimeLeft as a retry
	// hint; the real API sends the header on some throttling answers only
	// and documents neither the fields nor their units, so a client must
	// also cope without it. The default is off.
	Hint bool
}

func checkQuota(q Quota) error {
	switch {
	case !(q.QPS >= 0) || math.IsInf(q.QPS, 1):
		return fmt.Errorf("ecdsim: quota rate %v is not a finite number >= 0", q.QPS)
	case q.Burst < 0:
		return fmt.Errorf("ecdsim: quota burst %d is negative", q.Burst)
	}
	return nil
}

// bucket is the token bucket of a [Quota]. It is safe for concurrent use.
type bucket struct {
	mu     sync.Mutex
	q      Quota
	burst  float64
	tokens float64
	last   time.Time
	filled bool // last is set
}

// set replaces the quota and fills the bucket.
func (b *bucket) set(q Quota) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q.Burst == 0 {
		q.Burst = max(1, int(math.Min(math.Ceil(q.QPS), math.MaxInt32)))
	}
	b.q = q
	b.burst = float64(q.Burst)
	b.tokens = b.burst
	b.filled = false
}

// tokenSlack absorbs the rounding of refills, so a bucket refilled in many
// small steps admits exactly as many calls as one refilled at once.
const tokenSlack = 1e-9

// take takes a token at now. Without one it returns false, how long until
// the bucket holds one, and the quota in force.
func (b *bucket) take(now time.Time) (bool, time.Duration, Quota) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.q.QPS == 0 {
		return true, 0, b.q
	}
	if !b.filled {
		b.last, b.filled = now, true
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(b.burst, b.tokens+d.Seconds()*b.q.QPS)
		b.last = now
	}
	if b.tokens >= 1-tokenSlack {
		b.tokens--
		return true, 0, b.q
	}
	// Rounded to the nanosecond, so float error cannot add a millisecond
	// to the hint; capped, so a tiny rate cannot overflow.
	wait := time.Duration(math.Min(math.Round((1-b.tokens)/b.q.QPS*float64(time.Second)), float64(24*time.Hour)))
	return false, wait, b.q
}

// rateLimitHeader is the x-ratelimit-user-api value of a quota throttle.
func rateLimitHeader(q Quota, wait time.Duration) string {
	ms := max(1, (wait+time.Millisecond-1)/time.Millisecond)
	return "Limit:" + strconv.Itoa(q.Burst) + ",Remain:0,TimeLeft:" + strconv.FormatInt(int64(ms), 10)
}

// Quota returns the account quota in force, its Burst resolved (0 when
// there is no quota).
func (s *Simulator) Quota() Quota {
	s.quota.mu.Lock()
	defer s.quota.mu.Unlock()
	if s.quota.q.QPS == 0 {
		return Quota{}
	}
	return s.quota.q
}

// SetQuota replaces the account quota and fills its bucket. A rate that
// is negative, NaN or infinite means no quota, and a negative burst the
// default. It is safe for concurrent use.
func (s *Simulator) SetQuota(q Quota) {
	if !(q.QPS > 0) || math.IsInf(q.QPS, 1) {
		q.QPS = 0
	}
	q.Burst = max(q.Burst, 0)
	s.quota.set(q)
}
