/*
 * Whether a consumed message may carry headers, read from librdkafka's own message
 * struct, compiled against the headers of the librdkafka that rdkafka-sys built.
 *
 * rd_kafka_message_headers() parses a consumed message's header section on first use.
 * That section always holds at least its count, so even a message with no headers
 * costs a parse buffer allocated, zeroed and freed. Reading the count's first byte here
 * tells the common case (count 0) apart without it; every other case goes on to
 * rd_kafka_message_headers(), which decides as before.
 */
#include "rdkafka_int.h"
#include "rdkafka_msg.h"

int eventbus_message_may_have_headers(rd_kafka_message_t *rkmessage) {
        const rd_kafka_msg_t *rkm = rd_kafka_message2msg(rkmessage);

        if (rkm->rkm_headers || (rkm->rkm_flags & RD_KAFKA_MSG_F_PRODUCER))
                return 1;
        if (RD_KAFKAP_BYTES_LEN(&rkm->rkm_u.consumer.binhdrs) <= 0)
                return 0;
        /* The count is a zigzag varint: a first byte of 0 is the count 0. */
        return ((const unsigned char *)rkm->rkm_u.consumer.binhdrs.data)[0] != 0;
}
