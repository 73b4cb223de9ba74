package instacart

import (
	"context"
	"net/http"

	"github.com/hashicorp/vault/sdk/framework"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/prometheus/common/expfmt"
)

// metricsFormatPrometheus is the one format served (and the default).
const metricsFormatPrometheus = "prometheus"

func pathMetrics(b *backend) *framework.Path {
	return &framework.Path{
		Pattern: "metrics",
		DisplayAttrs: &framework.DisplayAttributes{
			OperationPrefix: operationPrefixInstacart,
			OperationSuffix: "metrics",
		},
		Fields: map[string]*framework.FieldSchema{
			"format": {
				Type:        framework.TypeString,
				Description: "Output format: prometheus (the text exposition format).",
				Default:     metricsFormatPrometheus,
				Query:       true,
			},
		},
		Operations: map[logical.Operation]framework.OperationHandler{
			logical.ReadOperation: &framework.PathOperation{
				Callback:     b.pathMetricsRead,
				DisplayAttrs: &framework.DisplayAttributes{OperationVerb: "read"},
			},
		},
		HelpSynopsis:    "The mount's metrics, in Prometheus' text format.",
		HelpDescription: pathMetricsHelp,
	}
}

const pathMetricsHelp = `
Returns this mount's metrics in Prometheus' text exposition format
(format=prometheus, the default): token requests sent to Connect by role,
grant and outcome; creds reads by where the token came from; upstream
request durations and retries; revocations, and tokens waiting to be
revoked; shared tokens held and their expiry; the renew_by date of the
credentials; and the plugin's version. Each mount keeps its own figures,
counted since its plugin process started. The gauges are rebuilt from
storage at most once a minute, and at the first scrape after a config, role
or flush write. Reading it needs a policy granting read on this path, like
any other path of the mount.
`

func (b *backend) pathMetricsRead(ctx context.Context, req *logical.Request, d *framework.FieldData) (*logical.Response, error) {
	if format := d.Get("format").(string); format != metricsFormatPrometheus {
		return logical.ErrorResponse("format: %q is not supported: use %s", truncateForMessage(format), metricsFormatPrometheus), nil
	}
	body, err := b.metrics.scrape(ctx, b, req.Storage)
	if err != nil {
		return nil, err
	}
	return &logical.Response{Data: map[string]any{
		logical.HTTPContentType: string(expfmt.NewFormat(expfmt.TypeTextPlain)),
		logical.HTTPRawBody:     body,
		logical.HTTPStatusCode:  http.StatusOK,
	}}, nil
}
