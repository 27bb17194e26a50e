/* Error codes to names and messages, from the one table in internal.h. */
#include "internal.h"

const char *ss_error_name(int code)
{
    switch ((enum ss_error)code) {
#define SS_NAME_CASE(c, msg) case c: return #c;
        SS_ERROR_TABLE(SS_NAME_CASE)
#undef SS_NAME_CASE
    }
    return NULL;
}

const char *ss_error_message(int code)
{
    switch ((enum ss_error)code) {
#define SS_MESSAGE_CASE(c, msg) case c: return msg;
        SS_ERROR_TABLE(SS_MESSAGE_CASE)
#undef SS_MESSAGE_CASE
    }
    return NULL;
}
