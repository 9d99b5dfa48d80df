package sieve

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync/atomic"

	"github.com/vipmilter/vipmilter/config"
)

// pick chooses one member of g, preferring members that can send now.
func (p *Policy) pick(g *config.Group, m *Message, d *Decision) (*config.Binding, error) {
	live, skipped, missing := p.candidates(g)
	d.Unavailable += missing
	p.missing.Add(uint64(missing))
	note := ""
	if len(live) == 0 && missing > 0 {
		// A member without its address cannot send at all; rather than
		// queue mail behind an address that may never come back, the
		// message follows On_Policy_Error (fallback or 4xx).
		return nil, fmt.Errorf("group %q: no member can send (skipped %s)", g.Name, strings.Join(skipped, ", "))
	}
	if len(live) == 0 {
		// Leaving from another group's address would be worse than
		// waiting: the mail queues for a member until it comes back.
		live = g.Members
		note = "; no member available, picked among all so the mail waits in the queue"
	}
	var b *config.Binding
	switch g.Selection {
	case config.SelectRandom:
		b = weightedRandom(live)
	case config.SelectRoundRobin:
		b = weightedTurn(live, p.counters[g.Name])
	default:
		dom := ""
		if len(m.To) > 0 {
			dom = domainOf(m.To[0])
		}
		b = rendezvous(live, dom)
	}
	detail := fmt.Sprintf("%s (%s): picked %s", g.Name, g.Selection, b.Name)
	if len(skipped) > 0 {
		detail += "; skipped " + strings.Join(skipped, ", ")
		p.log.Debug("group members skipped", "group", g.Name, "skipped", skipped, "picked", b.Name)
	}
	d.Trace = append(d.Trace, Step{Rule: "group", Detail: detail + note})
	return b, nil
}

// candidates splits g's members into those that can send now and the
// reasons the others cannot; missing counts members whose address is not
// on the host.
func (p *Policy) candidates(g *config.Group) (live []*config.Binding, skipped []string, missing int) {
	live = make([]*config.Binding, 0, len(g.Members))
	for _, b := range g.Members {
		switch {
		case b.SuspendDelivery:
			skipped = append(skipped, b.Name+" (suspended)")
		case p.opts.Liveness != nil && !p.opts.Liveness.Live(b):
			skipped = append(skipped, b.Name+" (address not on host)")
			missing++
		default:
			live = append(live, b)
		}
	}
	return live, skipped, missing
}

func weight(b *config.Binding) int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}

// rendezvous is weighted highest-random-weight hashing: each member scores
// -w/ln(h) with h a uniform hash of (domain, member) in (0,1), so a
// destination keeps its member and removing one member moves only its
// share of destinations. domain is canonical (config.Domain), so a
// U-label and an A-label spelling of one domain stick to one member.
func rendezvous(bs []*config.Binding, domain string) *config.Binding {
	var best *config.Binding
	bestScore := math.Inf(-1)
	for _, b := range bs {
		h := hash01(domain, b.Name)
		s := -float64(weight(b)) / math.Log(h)
		if s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// hash01 maps (a, b) to (0,1) with FNV-1a plus a splitmix finaliser; it
// must be stable across processes and hosts, so no seeded hash.
func hash01(a, b string) float64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(a); i++ {
		h ^= uint64(a[i])
		h *= prime
	}
	h ^= 0
	h *= prime
	for i := 0; i < len(b); i++ {
		h ^= uint64(b[i])
		h *= prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return (float64(h>>11) + 0.5) / (1 << 53)
}

func weightedRandom(bs []*config.Binding) *config.Binding {
	total := 0
	for _, b := range bs {
		total += weight(b)
	}
	n := rand.IntN(total)
	for _, b := range bs {
		if n -= weight(b); n < 0 {
			return b
		}
	}
	return bs[len(bs)-1]
}

// weightedTurn walks the members in order, giving each as many turns in a
// row as its weight.
func weightedTurn(bs []*config.Binding, c *atomic.Uint64) *config.Binding {
	total := 0
	for _, b := range bs {
		total += weight(b)
	}
	n := int((c.Add(1) - 1) % uint64(total))
	for _, b := range bs {
		if n -= weight(b); n < 0 {
			return b
		}
	}
	return bs[len(bs)-1]
}
