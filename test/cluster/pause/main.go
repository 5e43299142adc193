// Command pause is the sandbox image of the cluster test's containerd: it
// waits for SIGTERM or SIGINT and exits, as the pause container does.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
