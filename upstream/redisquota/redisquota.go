// Package redisquota keeps the upstream budget that every replica of a
// gateway shares in Redis: a GCRA limiter per key
// (github.com/go-redis/redis_rate, one Lua script on Redis's own clock),
// which implements [upstream.SharedBudget].
package redisquota

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"

	"github.com/imagerecords/imagerecords/upstream"
)

// quietRedis keeps go-redis's own logger, which prints every failed dial
// to stderr outside the gateway's JSON log, silent: the upstream client
// logs the budget's state once per transition instead.
type quietRedis struct{}

func (quietRedis) Printf(context.Context, string, ...any) {}

var silenceRedis sync.Once

// Budget is a shared upstream budget in Redis.
type Budget struct {
	client  *redis.Client
	limiter *redis_rate.Limiter
}

var _ upstream.SharedBudget = (*Budget)(nil)

// New connects to the Redis of url: redis://[user:password@]host:port/db,
// or rediss:// for TLS (the go-redis URL form). It does not dial yet: a
// Redis that is down at start costs nothing but the fallback to pacing
// alone. New silences go-redis's process-wide logger.
func New(url string) (*Budget, error) {
	silenceRedis.Do(func() { redis.SetLogger(quietRedis{}) })
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("--quota-redis: %w", err)
	}
	// Fail fast: a budget that does not answer within the client's own
	// bound is skipped, and Redis's retries would only add to the wait.
	opts.MaxRetries = -1
	opts.DialTimeout = time.Second
	c := redis.NewClient(opts)
	return &Budget{client: c, limiter: redis_rate.NewLimiter(c)}, nil
}

// rateScale makes a fractional rate an integer one: rate calls/s is
// rate·rateScale calls per rateScale seconds, the same emission interval.
const rateScale = 1000

// Take asks for one call under key at rate calls/s, burst at once.
func (b *Budget) Take(ctx context.Context, key string, rate float64, burst int) (time.Duration, error) {
	limit := redis_rate.Limit{
		Rate:   max(int(math.Round(rate*rateScale)), 1),
		Period: rateScale * time.Second,
		Burst:  max(burst, 1),
	}
	res, err := b.limiter.Allow(ctx, key, limit)
	if err != nil {
		return 0, err
	}
	if res.Allowed > 0 {
		return 0, nil
	}
	return max(res.RetryAfter, time.Millisecond), nil
}

// Close closes the connections to Redis.
func (b *Budget) Close() error { return b.client.Close() }
