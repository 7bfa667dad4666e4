package registrytest

import (
	"net/http"
	"syscall"
	"testing"
)

func TestRegistry(t *testing.T) {
	r := Start(t, Options{TLS: true, Auth: true})
	c := r.client()
	get := func(user, pass string) int {
		req, _ := http.NewRequest(http.MethodGet, r.URL()+"/v2/", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("", ""); code != http.StatusUnauthorized {
		t.Errorf("anonymous: %d", code)
	}
	if code := get(r.Username, "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong password: %d", code)
	}
	if code := get(r.Username, r.Password); code != http.StatusOK {
		t.Errorf("authenticated: %d", code)
	}
	// Plain HTTP to the TLS port is not served.
	if resp, err := http.Get("http://" + r.Host + "/v2/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered 200")
		}
	}
	pid := r.cmd.Process.Pid
	r.Kill()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("registry pid %d still exists after Kill", pid)
	}
	if _, err := c.Get(r.URL() + "/v2/"); err == nil {
		t.Error("the killed registry answered")
	}
	r.Restart(t)
	if code := get(r.Username, r.Password); code != http.StatusOK {
		t.Errorf("after restart: %d", code)
	}

	p := Start(t, Options{})
	resp, err := http.Get(p.URL() + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("anonymous HTTP registry: %d", resp.StatusCode)
	}
}
