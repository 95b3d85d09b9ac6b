//go:build race

package gateway_test

// raceDetector reports whether the tests run under the race detector,
// which makes the gateway's work several times slower: wall-clock bounds
// on end-to-end runs then measure the detector, not the gateway.
const raceDetector = true
