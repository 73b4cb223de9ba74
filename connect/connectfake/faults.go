package connectfake

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"
)

// withFaults counts and records the request, then applies the next queued
// fault for path, if any.
func (s *Server) withFaults(path string, next func(http.ResponseWriter, *http.Request, []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, maxBody))
		s.mu.Lock()
		s.requests[path]++
		s.last[path] = RecordedRequest{
			Method: r.Method, RawQuery: r.URL.RawQuery, ContentType: r.Header.Get("Content-Type"),
			Header: r.Header.Clone(), Body: body,
		}
		var fault *Fault
		if q := s.faults[path]; len(q) > 0 {
			fault = &q[0]
			s.faults[path] = q[1:]
		}
		latency := s.latency
		s.mu.Unlock()

		if path == PathToken && latency > 0 && !s.sleep(r, latency) {
			return
		}
		if fault != nil {
			var handled *httptest.ResponseRecorder
			if fault.AfterHandling {
				handled = httptest.NewRecorder()
				next(handled, r, body)
			}
			if fault.Delay > 0 && !s.sleep(r, fault.Delay) {
				return
			}
			switch {
			case fault.Hang:
				select {
				case <-r.Context().Done():
				case <-s.closing:
				}
				return
			case fault.Reset:
				resetConnection(w)
				return
			case fault.Status != 0:
				if fault.RetryAfter != "" {
					w.Header().Set("Retry-After", fault.RetryAfter)
				}
				body := fault.Body
				if body == "" {
					body = genericErrorBody(fault.Status)
				}
				if tok := mintedToken(handled); tok != "" {
					body = strings.ReplaceAll(body, PlaceholderAccessToken, tok)
				}
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.WriteHeader(fault.Status)
				_, _ = io.WriteString(w, body)
				return
			case handled != nil: // a late answer: send the real one
				for k, v := range handled.Header() {
					w.Header()[k] = v
				}
				w.WriteHeader(handled.Code)
				_, _ = w.Write(handled.Body.Bytes())
				return
			}
		}
		next(w, r, body)
	}
}

// mintedToken is the access_token of a recorded 200 answer, if any.
func mintedToken(rec *httptest.ResponseRecorder) string {
	if rec == nil || rec.Code != http.StatusOK {
		return ""
	}
	var v struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.Unmarshal(rec.Body.Bytes(), &v)
	return v.AccessToken
}

// sleep waits d unless the client goes away or the fake closes first.
func (s *Server) sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
	case <-s.closing:
	}
	return false
}

// resetConnection promises a body, sends part of it and resets the TCP
// connection, like a proxy dying mid-response.
func resetConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 512\r\n\r\n{\"access_token\":\"")
	_ = buf.Flush()
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0) // RST instead of FIN
	}
	_ = conn.Close()
}

func genericErrorBody(status int) string {
	code := "server_error"
	switch {
	case status == http.StatusTooManyRequests:
		code = "too_many_requests"
	case status == http.StatusRequestTimeout:
		code = "request_timeout"
	case status < 500:
		code = "invalid_request"
	}
	return fmt.Sprintf(`{"error":%q,"error_description":%q}`, code, http.StatusText(status))
}
