// Command etcd is go.etcd.io/etcd/server/v3 (pinned in go.mod) built from the Go module proxy.
// It is the same entry point as upstream's etcd main: etcdmain.Main(os.Args).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
