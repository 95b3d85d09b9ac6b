package gateway

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
)

// This file refuses operator mistakes at start: settings that would
// otherwise be accepted silently or reported in words that do not say
// what to change. Every message names the value and the fix.

// ParseEnviron is [ParseArgs] with the variables of environ (the
// "KEY=value" form of os.Environ), as the daemon parses its start: it
// also refuses an IMAGERECORDS_ variable that names no flag
// ([CheckEnviron]), so a misspelt variable is never ignored.
func ParseEnviron(args, environ []string, output io.Writer) (Config, error) {
	if err := CheckEnviron(environ); err != nil {
		return DefaultConfig(), err
	}
	vars := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	return ParseArgs(args, func(k string) (string, bool) { v, ok := vars[k]; return v, ok }, output)
}

// serviceLink matches the variables Kubernetes puts into every container
// for every Service of its namespace (unless the pod sets
// enableServiceLinks: false): a Service named imagerecords gives
// IMAGERECORDS_SERVICE_HOST, IMAGERECORDS_PORT_8080_TCP and more, which
// share the gateway's prefix but are no settings of it.
var serviceLink = regexp.MustCompile(`_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT|PORT_[0-9]+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$`)

// CheckEnviron refuses a variable of environ ("KEY=value") that has the
// IMAGERECORDS_ prefix but names no flag, suggesting the flag it was
// probably meant for. Kubernetes service-link variables
// (IMAGERECORDS_SERVICE_HOST, IMAGERECORDS_PORT_8080_TCP, ...) are let
// through.
func CheckEnviron(environ []string) error {
	known := map[string]bool{}
	var names []string
	cfg := DefaultConfig()
	cfg.FlagSet(io.Discard).VisitAll(func(f *flag.Flag) {
		known[EnvName(f.Name)] = true
		names = append(names, EnvName(f.Name))
	})
	var unknown []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, EnvPrefix) && !known[k] && !serviceLink.MatchString(k) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	var b strings.Builder
	for i, k := range unknown {
		if i > 0 {
			b.WriteString("; ")
		}
		flagName := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(k, EnvPrefix), "_", "-"))
		fmt.Fprintf(&b, "%s is set, but imagerecordsd has no flag --%s", k, flagName)
		if near := nearest(k, names); near != "" {
			fmt.Fprintf(&b, " (did you mean %s?)", near)
		}
	}
	b.WriteString(": fix or unset it (imagerecordsd --help lists the flags; every one is IMAGERECORDS_<FLAG>)")
	return &UsageError{Err: errors.New(b.String())}
}

// nearest returns the name of names closest to s by edit distance, when
// it is close enough to be a likely typo.
func nearest(s string, names []string) string {
	best, bestDist := "", 4 // more than 3 edits is another word
	for _, n := range names {
		if d := editDistance(s, n); d < bestDist {
			best, bestDist = n, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// envValueError explains a variable whose value its flag refused: which
// variable and value, which flag, and what the flag takes.
func envValueError(f *flag.Flag, name, value string, err error) error {
	kind, _ := flag.UnquoteUsage(f)
	var want string
	switch kind {
	case "":
		want = "true or false"
	case "float":
		want = "a number"
	case "int":
		want = "a whole number"
	case "duration":
		want = "a duration such as 500ms, 10s or 1m"
	default:
		want = "a valid value"
	}
	if f.DefValue != "" {
		want += " (the default is " + f.DefValue + ")"
	}
	why := err.Error()
	if why == "parse error" || why == "value out of range" {
		why = ""
	} else {
		why = ": " + why
	}
	return &UsageError{Err: fmt.Errorf("%s=%q is not a valid --%s%s; set it to %s", name, value, f.Name, why, want)}
}

// validateOperations refuses values that would be accepted silently
// otherwise: simulator settings without --simulate (which would run
// against the real cloud), fractions outside 0..1, and negative sizes
// and durations.
func (c Config) validateOperations() error {
	if !c.Simulate {
		var set []string
		def := DefaultConfig()
		if c.SimulateFaults.Latency != 0 {
			set = append(set, fmt.Sprintf("--simulate-latency %v", c.SimulateFaults.Latency))
		}
		if c.SimulateFaults.ThrottleFraction != 0 {
			set = append(set, fmt.Sprintf("--simulate-throttle %v", c.SimulateFaults.ThrottleFraction))
		}
		if c.SimulateFaults.ServerErrorFraction != 0 {
			set = append(set, fmt.Sprintf("--simulate-server-errors %v", c.SimulateFaults.ServerErrorFraction))
		}
		if c.SimulateSeed != def.SimulateSeed {
			set = append(set, fmt.Sprintf("--simulate-seed %d", c.SimulateSeed))
		}
		if len(set) > 0 {
			return usage("%s only apply with --simulate; without it the gateway calls the real ECD endpoint: add --simulate, or drop them", strings.Join(set, ", "))
		}
	}
	for _, f := range []struct {
		name  string
		value float64
	}{
		{"--simulate-throttle", c.SimulateFaults.ThrottleFraction},
		{"--simulate-server-errors", c.SimulateFaults.ServerErrorFraction},
	} {
		if !(f.value >= 0 && f.value <= 1) {
			return usage("%s %v is not a fraction: use a value from 0 to 1, e.g. 0.3 for 30%% of the upstream calls", f.name, f.value)
		}
	}
	switch {
	case c.SimulateFaults.Latency < 0:
		return usage("--simulate-latency %v is negative: use 0 (none) or a duration such as 20ms", c.SimulateFaults.Latency)
	case c.UpstreamAttemptTimeout < 0:
		return usage("--upstream-attempt-timeout %v is negative: use a duration such as 10s (the default), or 0 for no bound per attempt", c.UpstreamAttemptTimeout)
	case c.CompressMinBytes < 0:
		return usage("--compress-min-bytes %d is negative: use 0 (never compress) or a size such as 1024", c.CompressMinBytes)
	case c.DrainDelay < 0:
		return usage("--drain-delay %v is negative: use 0 (drain at once) or a duration such as 5s", c.DrainDelay)
	}
	return nil
}
