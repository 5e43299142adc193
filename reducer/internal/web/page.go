package web

import (
	"embed"
	"net/http"
)

// The /map page: plain HTML, CSS and JavaScript embedded in the binary, so
// that it works offline. It draws /api/v1/map and reads the RTT histogram
// from /metrics.
//
//go:embed map/index.html map/map.js map/map.css
var mapFiles embed.FS

// pageCSP lets the page load only its own script and style and fetch only
// from the reducer.
const pageCSP = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func handleMap(mux *http.ServeMux) {
	mux.Handle("GET /map", pageFile("map/index.html", "text/html; charset=utf-8"))
	mux.Handle("GET /map/map.js", pageFile("map/map.js", "text/javascript; charset=utf-8"))
	mux.Handle("GET /map/map.css", pageFile("map/map.css", "text/css; charset=utf-8"))
	// The page's relative links need /map, not /map/.
	mux.Handle("GET /map/{$}", http.RedirectHandler("../map", http.StatusMovedPermanently))
}

func pageFile(name, contentType string) http.Handler {
	body, err := mapFiles.ReadFile(name)
	if err != nil {
		panic("web: embedded " + name + " missing: " + err.Error()) // a build error, caught by the tests
	}
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", contentType)
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Security-Policy", pageCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(body)
	})
}
