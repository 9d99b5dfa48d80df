package testenv

import (
	"bufio"
	"io"
	"net"
)

// AnswerDUNNO is the least an SMTPD policy service can do (Postfix
// SMTPD_POLICY_README): it reads each request on c to its empty line and
// answers "action=DUNNO", until c closes; then it closes c. It decides
// nothing and logs nothing, so it is the floor that vipmilter's policy
// service is measured against (policyd's BenchmarkMessage, bench/hooks'
// policy floor).
func AnswerDUNNO(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		if len(line) == 1 {
			if _, err := io.WriteString(c, "action=DUNNO\n\n"); err != nil {
				return
			}
		}
	}
}
