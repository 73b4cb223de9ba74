package connectfake

import (
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// Stats is the body of GET /_fake/stats.
type Stats struct {
	Requests    map[string]int `json:"requests"`
	Mints       int            `json:"mints"`
	Revocations int            `json:"revocations"`
	Tokens      int            `json:"tokens"`
}

// Stats returns the fake's counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{Requests: map[string]int{}, Mints: s.mints, Revocations: s.revocations, Tokens: len(s.tokens)}
	for k, v := range s.requests {
		st.Requests[k] = v
	}
	return st
}

// adminHandler serves the /_fake/ control API used by other processes (the
// demo script, the end-to-end suite, the benchmark). It is off unless
// EnableAdmin was called, and never reveals client secrets.
//
//	GET    /_fake/stats                       counters
//	POST   /_fake/reset                       zero the counters
//	POST   /_fake/faults   {"path","faults"}  queue faults (Fault fields in snake_case, durations in ms)
//	DELETE /_fake/faults                      drop queued faults
//	POST   /_fake/clients  {"client_id","client_secret"}
//	POST   /_fake/clients/{id}/secrets {"client_secret"}  accept one more secret (creates the client)
//	DELETE /_fake/clients/{id}
//	POST   /_fake/authorize {"client_id","redirect_uri","user_id"} → {"code"}
//	GET    /_fake/tokens/{token}              TokenInfo plus "live"
//	POST   /_fake/lifetime {"seconds"}
//	POST   /_fake/latency  {"milliseconds"}
//	POST   /_fake/skew     {"seconds"}        created_at offset (may be negative)
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /_fake/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("POST /_fake/reset", func(w http.ResponseWriter, r *http.Request) {
		s.ResetCounters()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/faults", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Path   string `json:"path"`
			Faults []struct {
				Status      int    `json:"status"`
				RetryAfter  string `json:"retry_after"`
				Body        string `json:"body"`
				DelayMillis int    `json:"delay_ms"`
				Hang        bool   `json:"hang"`
				Reset       bool   `json:"reset"`
				Repeat      int    `json:"repeat"`
				// AfterHandling: handle the request for real first (see Fault).
				AfterHandling bool `json:"after_handling"`
			} `json:"faults"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		var faults []Fault
		for _, f := range req.Faults {
			for range max(f.Repeat, 1) {
				faults = append(faults, Fault{Status: f.Status, RetryAfter: f.RetryAfter, Body: f.Body,
					Delay: time.Duration(f.DelayMillis) * time.Millisecond, Hang: f.Hang, Reset: f.Reset,
					AfterHandling: f.AfterHandling})
			}
		}
		s.InjectFaults(req.Path, faults...)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /_fake/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ClearFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/clients", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ClientID     string `json:"client_id"`
			ClientSecret string `json:"client_secret"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		if req.ClientID == "" || req.ClientSecret == "" {
			http.Error(w, "client_id and client_secret are required", http.StatusBadRequest)
			return
		}
		s.AddClient(req.ClientID, req.ClientSecret)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/clients/{id}/secrets", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ClientSecret string `json:"client_secret"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		if req.ClientSecret == "" {
			http.Error(w, "client_secret is required", http.StatusBadRequest)
			return
		}
		s.AddClientSecret(r.PathValue("id"), req.ClientSecret)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /_fake/clients/{id}", func(w http.ResponseWriter, r *http.Request) {
		s.RemoveClient(r.PathValue("id"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/authorize", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ClientID    string `json:"client_id"`
			RedirectURI string `json:"redirect_uri"`
			UserID      string `json:"user_id"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"code": s.IssueAuthorizationCode(req.ClientID, req.RedirectURI, req.UserID)})
	})
	mux.HandleFunc("GET /_fake/tokens/{token}", func(w http.ResponseWriter, r *http.Request) {
		tok := r.PathValue("token")
		info, ok := s.Token(tok)
		if !ok {
			http.Error(w, "unknown token", http.StatusNotFound)
			return
		}
		writeJSON(w, http.StatusOK, TokenState{TokenInfo: info, Live: s.TokenLive(tok)})
	})
	mux.HandleFunc("POST /_fake/lifetime", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Seconds int `json:"seconds"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		if req.Seconds <= 0 {
			http.Error(w, "seconds must be positive", http.StatusBadRequest)
			return
		}
		s.SetTokenLifetime(time.Duration(req.Seconds) * time.Second)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/skew", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Seconds int `json:"seconds"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		s.SetClockSkew(time.Duration(req.Seconds) * time.Second)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_fake/latency", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Milliseconds int `json:"milliseconds"`
		}
		if !decodeAdmin(w, r, &req) {
			return
		}
		s.SetLatency(time.Duration(req.Milliseconds) * time.Millisecond)
		w.WriteHeader(http.StatusNoContent)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		enabled := s.admin
		s.mu.Unlock()
		if !enabled {
			http.NotFound(w, r)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

func decodeAdmin(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, maxBody)).Decode(v); err != nil {
		http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}
