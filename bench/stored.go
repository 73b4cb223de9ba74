package main

// Counting the engine's stored per-user tokens in Vault's own storage
// (sys/raw), in either layout: the previous release's tokens/<role>/user-<hash>
// and the sharded users/<role>/<first two hex chars>/<hash> (superseded
// per-user tokens as users/<role>/<shard>/old-<hash>); role-wide tokens stay
// at tokens/<role>/role and tokens/<role>/old-<hash>.

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
)

// tokenStore names one role's token storage in one mount.
type tokenStore struct {
	v          *vault
	uuid, role string
}

func (v *vault) tokenStore(mount, role string) (*tokenStore, error) {
	uuid, err := v.MountUUID(mount)
	if err != nil {
		return nil, err
	}
	return &tokenStore{v: v, uuid: uuid, role: role}, nil
}

func (t *tokenStore) usersPrefix() string  { return "logical/" + t.uuid + "/users/" + t.role + "/" }
func (t *tokenStore) tokensPrefix() string { return "logical/" + t.uuid + "/tokens/" + t.role + "/" }

// keys are the storage keys (under logical/<uuid>/) of every stored token of
// the role but its role-wide one: per-user tokens in both layouts and
// superseded tokens. each, when non-nil, is called per shard list instead of
// collecting keys (counting a million keys needs no million strings).
func (t *tokenStore) walk(each func(key string)) error {
	shards, err := t.v.RawList(t.usersPrefix())
	if err != nil {
		return err
	}
	for _, s := range shards {
		if !strings.HasSuffix(s, "/") {
			each(t.usersPrefix() + s)
			continue
		}
		keys, err := t.v.RawList(t.usersPrefix() + s)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if !strings.HasSuffix(k, "/") {
				each(t.usersPrefix() + s + k)
			}
		}
	}
	keys, err := t.v.RawList(t.tokensPrefix())
	if err != nil {
		return err
	}
	for _, k := range keys {
		if k != "role" && !strings.HasSuffix(k, "/") {
			each(t.tokensPrefix() + k)
		}
	}
	return nil
}

// count is how many tokens of the role but its role-wide one are stored.
func (t *tokenStore) count() (int, error) {
	n := 0
	err := t.walk(func(string) { n++ })
	return n, err
}

// userKey is where a per-user token of id would be stored, in the layout of
// like (a stored per-user token's key).
func (t *tokenStore) userKey(like, id string) string {
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:])
	if strings.HasPrefix(like, t.usersPrefix()) {
		return t.usersPrefix() + h[:2] + "/" + h
	}
	return t.tokensPrefix() + "user-" + h
}

// rawGet reads one storage entry's value through sys/raw.
func (v *vault) rawGet(key string) (string, error) {
	var out struct {
		Data struct {
			Value string `json:"value"`
		} `json:"data"`
	}
	if err := v.Must(http.MethodGet, "sys/raw/"+key, nil, &out); err != nil {
		return "", err
	}
	return out.Data.Value, nil
}

// rawTree lists every key under prefix (ending in "/"), recursively.
func (v *vault) rawTree(prefix string) ([]string, error) {
	keys, err := v.RawList(prefix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, k := range keys {
		if strings.HasSuffix(k, "/") {
			sub, err := v.rawTree(prefix + k)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		out = append(out, prefix+k)
	}
	return out, nil
}

// promCounters is Vault's telemetry in Prometheus format (sys/metrics,
// enabled by default with a 24 h retention): series name (with labels) →
// value. Counters and summaries' _count are cumulative, so a difference
// between two reads counts exactly what happened in between.
func (v *vault) promCounters() (map[string]float64, error) {
	req, err := http.NewRequest(http.MethodGet, v.Addr+"/v1/sys/metrics?format=prometheus", nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Vault-Token", v.Token)
	resp, err := v.Client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("sys/metrics: %s", v.Redact(err.Error()))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("sys/metrics?format=prometheus: HTTP %d", resp.StatusCode)
	}
	return parseProm(string(body)), nil
}

// parseProm reads Prometheus text exposition: one "name{labels} value" a line.
func parseProm(text string) map[string]float64 {
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		x, err := strconv.ParseFloat(strings.TrimSpace(line[i+1:]), 64)
		if err != nil {
			continue
		}
		out[strings.TrimSpace(line[:i])] = x
	}
	return out
}
